"""The cdk-nag gate: a planted violation fails synth, in-process and through the real CDK CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam

from infra import execution_role
from infra.app_factory import build_app
from infra.nag import wildcard_findings
from tests.helpers import ROOT
from tests.infra.conftest import CONCERNS, ENVIRONMENTS
from tests.infra.planted_violation_app import plant

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def _cdk_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CDK_DISABLE_VERSION_CHECK="true", AWS_EC2_METADATA_DISABLED="true")
    # Synth must never need credentials: make sure none leak in from the machine.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(key, None)
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent"
    return env


def _cdk(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The pinned CDK CLI, with no credentials and no version check."""
    return subprocess.run([str(CDK), *args], cwd=cwd, env=_cdk_env(), capture_output=True, text=True, timeout=300)


def _violations(outdir: Path) -> list[dict]:
    """cdk-nag's findings (the report also carries CDK's own CloudFormation warnings)."""
    report = json.loads((outdir / "validation-report.json").read_text())
    return [v for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions" for v in r["violations"]]


def test_planted_violation_fails_synth_in_process(context_copy, tmp_path):
    context_copy["env"] = "dev"
    app, _ = build_app(context=context_copy, outdir=str(tmp_path))
    plant(app)
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    rules = {v["ruleName"] for v in _violations(tmp_path)}
    assert "AwsSolutions-S10" in rules  # no SSL enforcement
    assert "AwsSolutions-S1" in rules  # no server access logs
    paths = {c["constructPath"] for v in _violations(tmp_path) for c in v["violatingConstructs"]}
    assert paths == {"loraops-planted-violation/InsecureBucket/Resource"}


def test_planted_violation_fails_cdk_cli_synth(tmp_path):
    result = _cdk(
        "synth",
        "-q",
        "--no-notices",
        "-c",
        "env=dev",
        "-o",
        str(tmp_path),
        "--app",
        f"{sys.executable} -m tests.infra.planted_violation_app",
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "AwsSolutions-S10" in result.stdout + result.stderr


def test_wildcard_statement_without_a_reason_is_refused():
    statement = iam.PolicyStatement(sid="Unreasoned", actions=["s3:GetObject"], resources=["arn:aws:s3:::b/*"])
    with pytest.raises(KeyError, match="'Unreasoned' uses a wildcard but has no reason"):
        wildcard_findings([statement], execution_role.WILDCARD_REASONS)


def test_every_wildcard_reason_is_concrete():
    for sid, reason in execution_role.WILDCARD_REASONS.items():
        assert len(reason) > 40, sid


def test_cli_synth_of_every_environment_is_clean_and_lints(tmp_path):
    """`cdk synth` with no credentials: a template per stack of every environment, no findings, cfn-lint clean."""
    result = _cdk("synth", "-q", "--no-notices", "-o", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    templates = sorted(p.name for p in tmp_path.glob("*.template.json"))
    assert templates == sorted(f"loraops-{env}-{concern}.template.json" for env in ENVIRONMENTS for concern in CONCERNS)
    assert _violations(tmp_path) == []
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert [v for r in report["pluginReports"] for v in r["violations"]] == [], "no warnings either"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "missing" not in manifest, "synth needed a context lookup (AWS credentials)"
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), *map(str, tmp_path.glob("*.template.json"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_env_context_selects_one_environment(context_copy):
    """`cdk synth -c env=dev` sets the context value `env`; the app builds that environment's stacks only."""
    context_copy["env"] = "dev"
    app, environments = build_app(context=context_copy)
    assert [env.config.name for env in environments] == ["dev"]
    stacks = [child.stack_name for child in app.node.children if isinstance(child, cdk.Stack)]
    assert sorted(stacks) == sorted(f"loraops-dev-{concern}" for concern in CONCERNS)


def test_app_refuses_an_unknown_environment_in_one_line(cdk_context):
    """The CDK app as the CLI starts it (`app` in cdk.json, context in CDK_CONTEXT_JSON): one line, non-zero exit."""
    env = dict(_cdk_env(), CDK_CONTEXT_JSON=json.dumps({**cdk_context, "env": "qa"}))
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    known = ", ".join(sorted(ENVIRONMENTS))
    assert result.stderr.strip().splitlines()[-1] == f"loraops: -c env=qa: unknown environment (configured: {known})"


def test_cdk_json_sets_every_feature_flag_cdk_init_recommends(tmp_path, cdk_context):
    """The flags `cdk init` writes for the pinned CLI; only defaultCrossStackReferences keeps another value."""
    result = _cdk("init", "app", "--language", "python", "--generate-only", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    recommended = json.loads((tmp_path / "cdk.json").read_text())["context"]
    missing = sorted(set(recommended) - set(cdk_context))
    assert missing == [], missing
    differing = {k for k, v in recommended.items() if cdk_context[k] != v}
    assert differing == {"@aws-cdk/core:defaultCrossStackReferences"}, differing
