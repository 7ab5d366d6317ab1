"""Promotion from staging to prod (issue #21), end to end against the local AWS emulator: two environments in two
regions (staging us-east-1, prod us-west-2, as cdk.json has them), each with its bucket and its groups, boto3 over HTTP.

The models are small hand-made Hugging Face folders (valid safetensors, a manifest the registry checks): what is
tested here is the registry and S3, not the weights. The promote function is called in-process (moto cannot run
Lambda without Docker)."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.manifest import EVALUATION_FILE, MANIFEST_FILE, Manifest
from loraops.naming import TAG_APPROVAL_POLICY, OutputMode, base_group_name
from loraops.packages import APPROVED, PENDING
from loraops.promotion import Promotion, PromotionError, SourceEnvironment
from loraops.registry import Registry
from tests.registry.conftest import ADAPTER_GROUP, MODEL_ID, LambdaContext, create_environment, load_handler

STAGING = SourceEnvironment("staging", "123456789012", "us-east-1")  # moto's default account
PROD_REGION = "us-west-2"
STAGING_BUCKET, PROD_BUCKET = "loraops-staging-artifacts", "loraops-prod-artifacts"
BASE_GROUP = base_group_name(MODEL_ID)
JOB = "loraops-dolly-adapter-3"


def _safetensors(path: Path, values: int, fill: float) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack(f"<{values}f", *[fill] * values))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A base model folder and a training job's adapter output (manifest included) trained on it."""
    from loraops.manifest import folder_weights_digest

    base = tmp_path_factory.mktemp("base")
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    _safetensors(base / "model.safetensors", 64, 0.5)
    adapter = tmp_path_factory.mktemp("adapter")
    _safetensors(adapter / "adapter_model.safetensors", 16, 0.25)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (adapter / EVALUATION_FILE).write_text(json.dumps({"language_modeling_metrics": {"loss": {"value": 1.5}}}))
    Manifest(
        output_mode=OutputMode.ADAPTER,
        base_model_id=MODEL_ID,
        base_weights_digest=folder_weights_digest(base),
        dataset_name="databricks-dolly-15k",
        dataset_digest="sha256:" + "d" * 64,
        data={},
        hyperparameters={"lora_r": 8},
        code_version="test",
        metrics={"validation_loss": 1.5},
        training_job=JOB,
    ).write(adapter)
    return {"base": base, "adapter": adapter}


def _clients(emulator: str, region: str) -> dict:
    config = Config(retries={"max_attempts": 1})
    return {n: boto3.client(n, endpoint_url=emulator, region_name=region, config=config) for n in ("sagemaker", "s3")}


@pytest.fixture
def world(aws, emulator, folders):
    """Staging holds an approved base and an approved adapter of it; prod (manual approval) holds nothing yet."""
    staging = _clients(emulator, STAGING.region)
    prod = _clients(emulator, PROD_REGION)
    create_environment(staging, "manual", "staging", STAGING_BUCKET)
    create_environment({"s3": staging["s3"], "sagemaker": prod["sagemaker"]}, "manual", "prod", PROD_BUCKET)
    for bucket in (STAGING_BUCKET, PROD_BUCKET):  # the stacks' buckets are versioned
        staging["s3"].put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    source = Registry(staging["sagemaker"], staging["s3"], STAGING_BUCKET, STAGING.region, approval="manual")
    base = source.decide(import_base(source, LocalFolder(folders["base"]), MODEL_ID, licence="llama2").arn, True)
    prefix = s3_layout.model_prefix(OutputMode.ADAPTER, ADAPTER_GROUP, JOB)
    for path in sorted(folders["adapter"].iterdir()):
        staging["s3"].upload_file(str(path), STAGING_BUCKET, prefix + path.name)
    adapter = source.decide(source.register_finetune(ADAPTER_GROUP, prefix, JOB).arn, True)
    return {"staging": staging, "prod": prod, "base": base, "adapter": adapter, "emulator": emulator}


class _S3Calls:
    """(operation, key) of every call an S3 client makes, from the API parameters botocore is given."""

    def __init__(self, client) -> None:
        self.calls: list[tuple[str, str]] = []
        client.meta.events.register("before-parameter-build.s3.*", self._record)

    def _record(self, event_name: str, params: dict, **_) -> None:
        self.calls.append((event_name.rsplit(".", 1)[-1], params.get("Key", "")))


def _promotion(world, prod_approval: str = "manual") -> Promotion:
    """A promotion with its own clients (as each Lambda invocation has)."""
    staging, prod = _clients(world["emulator"], STAGING.region), _clients(world["emulator"], PROD_REGION)
    return Promotion(
        Registry(staging["sagemaker"], staging["s3"], STAGING_BUCKET, STAGING.region),
        Registry(prod["sagemaker"], prod["s3"], PROD_BUCKET, PROD_REGION, approval=prod_approval),
        STAGING,
    )


def _prod_objects(world) -> dict[str, bytes]:
    s3 = world["prod"]["s3"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=PROD_BUCKET).get("Contents", [])]
    return {k: s3.get_object(Bucket=PROD_BUCKET, Key=k)["Body"].read() for k in keys}


def _prod_packages(world) -> list[dict]:
    sagemaker = world["prod"]["sagemaker"]
    return [
        p
        for group in (BASE_GROUP, ADAPTER_GROUP)
        for p in sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    ]


def test_an_approved_base_and_adapter_reach_prod_copied_inside_s3_with_their_lineage_and_wait_for_approval(world):
    promotion = _promotion(world)
    calls = _S3Calls(promotion.target.s3)

    base = promotion.promote(world["base"].arn)
    promotion.target.decide(base.arn, approve=True)  # prod's approver
    adapter = promotion.promote(world["adapter"].arn)

    for promoted, source in ((base, world["base"]), (adapter, world["adapter"])):
        assert promoted.status == PENDING and promoted.group == source.group
        assert promoted.model_data_uri == f"s3://{PROD_BUCKET}/{source.model_data_prefix}"  # the same prefix
        assert promoted.metadata["sourcePackageArn"] == source.arn
        assert promoted.metadata["sourceEnvironment"] == "staging"
        assert promoted.metadata["contentDigest"] == source.metadata["contentDigest"]
        promotion.target.verify_content(promoted)  # prod's own check of what it would serve
    assert adapter.metadata["baseModelPackageArn"] == base.arn  # prod's base, not staging's
    assert adapter.metadata["manifest"] == f"s3://{PROD_BUCKET}/{adapter.model_data_prefix}{MANIFEST_FILE}"
    assert adapter.metadata["trainingJob"] == JOB and adapter.metadata["datasetName"] == "databricks-dolly-15k"
    staging_s3 = world["staging"]["s3"]
    for key, body in _prod_objects(world).items():
        assert staging_s3.get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read() == body
    # the bytes moved inside S3: into prod only by UploadPartCopy (PutObject wrote the registration claims only)
    writes = [(op, key) for op, key in calls.calls if op in ("PutObject", "UploadPart")]
    assert writes and all(op == "PutObject" and key.startswith("registrations/") for op, key in writes)
    assert sorted(key for op, key in calls.calls if op == "UploadPartCopy") == sorted(_prod_objects(world))


@pytest.mark.parametrize(("environment", "expected"), [("auto", APPROVED), ("manual", PENDING)])
def test_a_promoted_package_is_approved_only_where_prods_policy_is_auto(world, environment, expected):
    """prod's groups say auto here; the environment's own policy (the function's APPROVAL) can only make it stricter."""
    sagemaker = world["prod"]["sagemaker"]
    group = sagemaker.describe_model_package_group(ModelPackageGroupName=BASE_GROUP)["ModelPackageGroupArn"]
    sagemaker.add_tags(ResourceArn=group, Tags=[{"Key": TAG_APPROVAL_POLICY, "Value": "auto"}])
    assert _promotion(world, prod_approval=environment).promote(world["base"].arn).status == expected


def test_promoting_twice_gives_one_package_and_copies_nothing_the_second_time(world):
    first = _promotion(world).promote(world["base"].arn)
    before = _prod_objects(world)
    promotion = _promotion(world)
    calls = _S3Calls(promotion.target.s3)
    assert promotion.promote(world["base"].arn) == first
    assert _prod_objects(world) == before and len(_prod_packages(world)) == 1
    assert not [op for op, _ in calls.calls if op in ("UploadPartCopy", "CompleteMultipartUpload", "PutObject")]


def test_two_concurrent_promotions_give_one_package(world):
    """Each promotion holds back its CreateModelPackage until the other has found the registration claim taken,
    so both are inside the registration at once (whichever claims first)."""
    promotions = [_promotion(world), _promotion(world)]
    refused = [threading.Event(), threading.Event()]
    start, results, errors = threading.Barrier(2), [None, None], []

    def hold_until_the_other_is_refused(i: int):
        def hook(**_):
            assert refused[1 - i].wait(timeout=120), "the other promotion never reached the claim"

        return hook

    def note_refusal(i: int):
        def hook(parsed, **_):
            if parsed.get("Error", {}).get("Code") == "PreconditionFailed":
                refused[i].set()

        return hook

    for i, promotion in enumerate(promotions):
        promotion.target.sagemaker.meta.events.register(
            "before-call.sagemaker.CreateModelPackage", hold_until_the_other_is_refused(i)
        )
        promotion.target.s3.meta.events.register("after-call.s3.PutObject", note_refusal(i))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = promotions[i].promote(world["base"].arn)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and results[0] is not None and results[0] == results[1]
    assert any(event.is_set() for event in refused)
    assert len(_prod_packages(world)) == 1


def _refusals():
    def not_approved(world):
        staging = _promotion(world).source
        staging.decide(world["adapter"].arn, approve=False, reason="worse than v1")
        return world["adapter"].arn, r"is Rejected in staging; only Approved packages are promoted"

    def other_environment(world):
        return world["base"].arn.replace(":us-east-1:", f":{PROD_REGION}:"), r"promotions come from staging"

    def other_account(world):
        return world["base"].arn.replace(":123456789012:", ":111111111111:"), r"account 111111111111"

    def tampered(world):
        promotion = _promotion(world)
        promotion.target.decide(promotion.promote(world["base"].arn).arn, approve=True)
        key = world["adapter"].model_data_prefix + "adapter_config.json"
        world["staging"]["s3"].put_object(Bucket=STAGING_BUCKET, Key=key, Body=b'{"r": 64}')
        return world["adapter"].arn, r"fails digest verification in staging: .*adapter_config.json changed"

    def base_not_in_prod(world):
        return world["adapter"].arn, r"promote its base and approve it first"

    def not_a_package(world):
        return "arn:aws:sagemaker:us-east-1:123456789012:model-package-group/x", "not a versioned model package ARN"

    return [not_approved, other_environment, other_account, tampered, base_not_in_prod, not_a_package]


@pytest.mark.parametrize("case", _refusals(), ids=lambda f: f.__name__)
def test_a_refused_promotion_writes_nothing(world, case):
    arn, message = case(world)
    before = (_prod_objects(world), _prod_packages(world))
    with pytest.raises(PromotionError, match=message):
        _promotion(world).promote(arn)
    assert (_prod_objects(world), _prod_packages(world)) == before


def test_a_base_pending_in_prod_does_not_carry_its_adapters_over(world):
    _promotion(world).promote(world["base"].arn)  # pending in prod
    before = _prod_objects(world)
    with pytest.raises(PromotionError, match="promote its base and approve it first"):
        _promotion(world).promote(world["adapter"].arn)
    assert _prod_objects(world) == before and len(_prod_packages(world)) == 1


def test_a_prod_key_holding_other_bytes_is_refused_before_anything_is_copied(world):
    key = world["base"].model_data_prefix + "model.safetensors"  # copied after config.json, were it not checked first
    world["prod"]["s3"].put_object(Bucket=PROD_BUCKET, Key=key, Body=b"other bytes")
    with pytest.raises(PromotionError, match="already holds other bytes"):
        _promotion(world).promote(world["base"].arn)
    assert _prod_objects(world) == {key: b"other bytes"} and _prod_packages(world) == []


def test_the_copy_takes_the_verified_version_when_staging_changes_during_it(world):
    """An object overwritten in staging after verification (here: at the first part copy) is copied as verified."""
    promotion = _promotion(world)
    key = world["adapter"].model_data_prefix + "adapter_config.json"
    verified = world["staging"]["s3"].get_object(Bucket=STAGING_BUCKET, Key=key)["Body"].read()
    promotion.promote(world["base"].arn)
    promotion.target.decide(_prod_packages(world)[0]["ModelPackageArn"], approve=True)
    overwritten = []

    def overwrite(**_):
        if not overwritten:
            overwritten.append(world["staging"]["s3"].put_object(Bucket=STAGING_BUCKET, Key=key, Body=b"{}"))

    promotion.target.s3.meta.events.register("before-call.s3.UploadPartCopy", overwrite)
    adapter = promotion.promote(world["adapter"].arn)
    assert overwritten
    assert world["prod"]["s3"].get_object(Bucket=PROD_BUCKET, Key=key)["Body"].read() == verified
    promotion.target.verify_content(adapter)


def _promote_function_environment(world, monkeypatch) -> None:
    """The environment prod's stack gives the promote function, pointed at the emulator."""
    for key, value in dict(
        AWS_ENDPOINT_URL=world["emulator"],
        AWS_REGION=PROD_REGION,
        ARTIFACT_BUCKET=PROD_BUCKET,
        APPROVAL="manual",
        SOURCE_ENVIRONMENT="staging",
        SOURCE_ACCOUNT=STAGING.account,
        SOURCE_REGION=STAGING.region,
        SOURCE_BUCKET=STAGING_BUCKET,
    ).items():
        monkeypatch.setenv(key, value)


def test_the_function_promotes_and_refuses_with_the_reason(world, monkeypatch):
    _promote_function_environment(world, monkeypatch)
    function = load_handler("promote")
    result = function.handler({"package_arn": world["base"].arn}, LambdaContext())
    assert result["promoted"] and result["status"] == PENDING and result["source_package_arn"] == world["base"].arn
    assert result["source_environment"] == "staging"
    assert result["content_digest"] == world["base"].metadata["contentDigest"]
    refused = function.handler({"package_arn": world["adapter"].arn}, LambdaContext())
    assert refused == {"promoted": False, "reason": refused["reason"]} and "approve it first" in refused["reason"]
    assert function.handler({}, LambdaContext())["promoted"] is False


class _PromoteFunction:
    """Stands in for Lambda (moto needs Docker to run a function): ``invoke`` checks its parameters against botocore's
    model of the Lambda API, then runs the promote handler in this process with the environment the stack gives it."""

    def __init__(self, handler, invoked: list) -> None:
        self.handler, self.invoked = handler, invoked
        self.model = boto3.client("lambda", region_name=PROD_REGION).meta.service_model

    def invoke(self, **params):
        import io

        from botocore.exceptions import ParamValidationError
        from botocore.validate import ParamValidator

        report = ParamValidator().validate(params, self.model.operation_model("Invoke").input_shape)
        if report.has_errors():
            raise ParamValidationError(report=report.generate_report())
        self.invoked.append(params)
        result = self.handler.handler(json.loads(params["Payload"]), LambdaContext())
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


@pytest.fixture
def cli(world, monkeypatch, capsys):
    """``loraops models promote`` against the emulator, its function run in-process."""
    from loraops.cli import main
    from loraops.cli import promote as promote_cli

    _promote_function_environment(world, monkeypatch)
    invoked: list = []
    function = _PromoteFunction(load_handler("promote"), invoked)
    monkeypatch.setattr(promote_cli, "lambda_client", lambda args: function)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["models", "promote", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    run.invoked = invoked
    return run


def test_the_cli_promotes_through_the_function_and_prints_the_lineage(cli, world):
    code, out, err = cli(world["base"].arn, "--to", "prod", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["schema_version"] == 1 and result["status"] == PENDING
    assert result["source_package_arn"] == world["base"].arn and result["source_environment"] == "staging"
    assert [p["FunctionName"] for p in cli.invoked] == ["loraops-prod-promote"]
    assert cli.invoked[0]["InvocationType"] == "RequestResponse"
    code, out, _ = cli(world["base"].arn, "--to", "prod")
    assert code == 0 and f"promoted from staging {world['base'].arn}" in out and len(_prod_packages(world)) == 1


def test_the_cli_refuses_in_one_line_and_changes_nothing(cli, world):
    code, out, err = cli(world["adapter"].arn, "--to", "prod")  # its base is not in prod
    assert (code, out) == (1, "")
    # the CLI's own line (the in-process function's log lines share stderr here; in AWS they go to CloudWatch)
    (line,) = [line for line in err.splitlines() if line.startswith("loraops:")]
    assert err.endswith(line + "\n") and line.startswith("loraops: error: not promoted: ")
    assert "promote its base and approve it first" in line
    assert _prod_objects(world) == {} and _prod_packages(world) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arn:aws:sagemaker:us-east-1:123456789012:model-package-group/g", "--to", "prod"], "not a versioned"),
        (["arn:aws:sagemaker:us-east-1:123456789012:model-package/g/1", "--to", "Prod!"], "not an environment name"),
    ],
)
def test_the_cli_rejects_malformed_arguments_with_a_usage_error_before_invoking(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and message in err and cli.invoked == []
