"""Lambda assets are named by their content: staged once per process, never rewritten in place."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from infra import functions


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A copy of the function sources the assets are made of, with its own build folder."""
    root = tmp_path / "repo"
    shutil.copytree(functions.REPO_ROOT / "lambda" / "register_base", root / "lambda" / "register_base")
    shutil.copytree(functions.REPO_ROOT / "loraops", root / "loraops")
    monkeypatch.setattr(functions, "REPO_ROOT", root)
    monkeypatch.setattr(functions, "BUILD", tmp_path / "build")
    functions.staged_asset.cache_clear()
    yield root
    functions.staged_asset.cache_clear()


def test_other_content_is_staged_beside_the_first_never_over_it(checkout):
    first, first_hash = functions.staged_asset("register_base")
    handler = (first / "handler.py").read_bytes()
    (checkout / "lambda" / "register_base" / "handler.py").write_text("# changed\n")
    functions.staged_asset.cache_clear()
    second, second_hash = functions.staged_asset("register_base")
    assert second_hash != first_hash and second != first
    assert (first / "handler.py").read_bytes() == handler
    assert (second / "handler.py").read_text() == "# changed\n"
    assert {p.name for p in functions.BUILD.iterdir()} == {first.name, second.name}, "no temporary folder left"


def test_the_same_content_is_staged_once(checkout):
    first = functions.staged_asset("register_base")
    functions.staged_asset.cache_clear()
    assert functions.staged_asset("register_base") == first
    assert len(list(functions.BUILD.iterdir())) == 1


def test_the_templates_name_the_code_by_its_content(templates):
    """The content digest is the asset hash (CDK publishes a custom hash under its SHA-256): no second hash of the
    folder, and the key changes exactly when the content does."""
    _, content = functions.staged_asset("register_finetune")
    template = next(t for (env, concern), t in templates.items() if concern == "registration")
    keys = [r["Properties"]["Code"]["S3Key"] for r in template.find_resources("AWS::Lambda::Function").values()]
    assert f"{hashlib.sha256(content.encode()).hexdigest()}.zip" in keys
