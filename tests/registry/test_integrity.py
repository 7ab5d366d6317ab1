"""The registry as a system of record (issue #20): a version is named by the digest of every file it serves and
its objects are written once; the same bytes give the same version, also when imports race; what cannot be served
(corrupt weights, junk beside the model) is refused or left out; approval comes from the environment's groups."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import struct
import threading
from pathlib import Path

import pytest

from loraops import s3_layout
from loraops.artifacts import ArtifactError, write_once
from loraops.base_import import import_base
from loraops.base_sources import LocalFolder
from loraops.collections import Hierarchy, migrate_member_tags, path_id
from loraops.manifest import BASE_MANIFEST, folder_content_digest
from loraops.model_files import check_safetensors
from loraops.naming import TAG_ENVIRONMENT
from loraops.packages import APPROVED, PENDING, RegistryError
from loraops.registry import Registry
from tests.registry.concurrent_import import import_in_step
from tests.registry.conftest import BUCKET, MODEL_ID, REGION, create_environment

GROUP = "meta-llama--Llama-2-7b-hf"


def _objects(aws, prefix: str) -> dict[str, str]:
    contents = aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in contents}


def _versions(aws) -> list[dict]:
    return aws["sagemaker"].list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_other_bytes_in_any_served_file_make_a_new_version_and_never_change_an_approved_one(
    registry, aws, tiny_base, tmp_path
):
    first = registry.decide(import_base(registry, LocalFolder(tiny_base), MODEL_ID, licence="a").arn, approve=True)
    before = _objects(aws, first.model_data_prefix)
    edited = _copy(tiny_base, tmp_path)
    config = json.loads((edited / "config.json").read_text())
    config["max_position_embeddings"] = 65536
    (edited / "config.json").write_text(json.dumps(config))
    (edited / "extra.txt").write_text("one extra file")

    second = import_base(registry, LocalFolder(edited), MODEL_ID, licence="another licence")

    assert second.arn != first.arn and second.version == 2 and second.status == PENDING
    assert second.model_data_prefix == s3_layout.base_model_prefix(GROUP, folder_content_digest(edited))
    assert _objects(aws, first.model_data_prefix) == before  # the approved prefix is untouched
    manifest = json.loads(
        aws["s3"].get_object(Bucket=BUCKET, Key=first.model_data_prefix + BASE_MANIFEST)["Body"].read()
    )
    assert manifest["licence"] == "a" and "extra.txt" not in manifest["files"]
    assert registry.describe(first.arn).status == APPROVED


def test_a_same_size_edit_of_a_non_weight_file_is_a_new_version(registry, aws, tiny_base, tmp_path):
    first = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    edited = _copy(tiny_base, tmp_path)
    text = (edited / "config.json").read_text()
    swapped = text.replace('"silu"', '"gelu"')  # the same size, other bytes
    assert len(swapped) == len(text) and swapped != text
    (edited / "config.json").write_text(swapped)
    second = import_base(registry, LocalFolder(edited), MODEL_ID)
    assert second.arn != first.arn and second.model_data_prefix != first.model_data_prefix


def test_the_same_bytes_again_give_the_same_version_without_rewriting_it(registry, aws, tiny_base):
    first = import_base(registry, LocalFolder(tiny_base), MODEL_ID, licence="a")
    before = _objects(aws, first.model_data_prefix)
    again = import_base(registry, LocalFolder(tiny_base), MODEL_ID, licence="b")
    assert again.arn == first.arn and _objects(aws, first.model_data_prefix) == before
    assert len(_versions(aws)) == 1


def test_a_write_once_key_holding_other_bytes_is_refused_not_replaced(aws):
    aws["s3"].create_bucket(Bucket=BUCKET)
    digest = "sha256:" + "ab" * 32
    aws["s3"].put_object(Bucket=BUCKET, Key="base/g/x/config.json", Body=b"other bytes")
    with pytest.raises(ArtifactError, match="already holds other bytes"):
        write_once(aws["s3"], BUCKET, "base/g/x/config.json", _Bytes(b"mine"), 4, digest)
    assert aws["s3"].get_object(Bucket=BUCKET, Key="base/g/x/config.json")["Body"].read() == b"other bytes"


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _bad_header(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"{" * length + data[8 + length :])


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_truncate, r"the header describes \d+ bytes, the file has \d+"), (_bad_header, "header is not JSON")],
)
def test_corrupt_safetensors_are_refused_and_nothing_is_written(registry, aws, tiny_base, tmp_path, damage, message):
    broken = _copy(tiny_base, tmp_path)
    damage(broken)
    with pytest.raises(RegistryError, match=message):
        import_base(registry, LocalFolder(broken), MODEL_ID)
    assert _objects(aws, "") == {} and _versions(aws) == []


def test_safetensors_check_accepts_what_safetensors_writes(tiny_base):
    data = (tiny_base / "model.safetensors").read_bytes()
    check_safetensors("model.safetensors", len(data), lambda offset, length: data[offset : offset + length])


def test_junk_beside_a_local_model_is_not_stored_and_does_not_change_its_digest(registry, aws, tiny_base, tmp_path):
    folder = _copy(tiny_base, tmp_path)
    for name in (".git/lfs/objects/ab/cd/blob", ".git/HEAD", ".cache/huggingface/download/x.metadata"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"junk")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"raw checkpoint")
    (folder / "pytorch_model.bin").write_bytes(b"the same weights again")
    package = import_base(registry, LocalFolder(folder), MODEL_ID)
    assert package.model_data_prefix == s3_layout.base_model_prefix(GROUP, folder_content_digest(tiny_base))
    stored = {k.removeprefix(package.model_data_prefix) for k in _objects(aws, package.model_data_prefix)}
    assert stored == {p.relative_to(tiny_base).as_posix() for p in tiny_base.rglob("*") if p.is_file()} | {
        BASE_MANIFEST
    }


def test_four_processes_importing_the_same_bytes_at_once_make_one_version(registry, aws, emulator, tiny_base):
    context = multiprocessing.get_context("spawn")
    barriers, results = (context.Barrier(4), context.Barrier(4)), context.Queue()
    args = (barriers, results, emulator, BUCKET, REGION, str(tiny_base), MODEL_ID)
    processes = [context.Process(target=import_in_step, args=args) for _ in range(4)]
    for process in processes:
        process.start()
    arns = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=120)
    assert len(set(arns)) == 1 and arns[0].startswith("arn:"), arns
    assert len(_versions(aws)) == 1
    assert _objects(aws, s3_layout.REGISTRATIONS) == {}  # every claim released


def test_a_registration_waits_for_the_one_holding_the_claim_and_returns_its_package(registry, aws, tiny_base):
    """The order forced with events: A holds the claim and is stopped before it creates; B finds the claim taken,
    looks up the package; then A creates and releases; B returns A's package."""
    from loraops.base_import import upload_base

    digest = upload_base(registry, LocalFolder(tiny_base), MODEL_ID)
    other = Registry(registry.sagemaker, _client(aws, "s3"), BUCKET, REGION, approval="manual")
    a_holds, b_refused, results = threading.Event(), threading.Event(), {}
    original = registry._create

    def create_when_b_waits(*args, **kwargs):
        a_holds.set()
        assert b_refused.wait(timeout=120)
        return original(*args, **kwargs)

    registry._create = create_when_b_waits
    other.s3.meta.events.register("after-call.s3.PutObject", lambda parsed, **_: _refused(parsed, b_refused))
    a = threading.Thread(target=lambda: results.__setitem__("a", registry.register_base(MODEL_ID, digest)))
    a.start()
    assert a_holds.wait(timeout=120)
    results["b"] = other.register_base(MODEL_ID, digest)
    a.join(timeout=120)
    assert results["a"].arn == results["b"].arn and len(_versions(aws)) == 1


def _refused(parsed: dict, event: threading.Event) -> None:
    if parsed.get("Error", {}).get("Code") == "PreconditionFailed":
        event.set()


def _client(aws, name: str):
    import boto3

    endpoint = aws[name].meta.endpoint_url
    return boto3.client(name, endpoint_url=endpoint, region_name=REGION)


def test_approval_comes_from_the_groups_tag_not_the_caller(aws, emulator, tiny_base, capsys):
    from loraops.cli import main

    create_environment(aws, "manual")
    options = ["--bucket", BUCKET, "--region", REGION, "--endpoint-url", emulator, "--json"]
    with pytest.raises(SystemExit) as usage:  # no caller's flag chooses the policy
        main(["base", "import", str(tiny_base), "--model-id", MODEL_ID, "--approval", "auto", *options])
    assert usage.value.code == 2 and "--approval" in capsys.readouterr().err
    assert main(["base", "import", str(tiny_base), "--model-id", MODEL_ID, *options]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == PENDING
    # and a function of an auto environment cannot approve into a manual group either
    registry = Registry(aws["sagemaker"], aws["s3"], BUCKET, REGION, approval="auto")
    assert registry.approval_status({"loraops:approvalPolicy": "manual"}) == PENDING
    assert registry.approval_status({"loraops:approvalPolicy": "auto"}) == APPROVED
    assert (
        Registry(aws["sagemaker"], aws["s3"], BUCKET, REGION, approval="manual").approval_status(
            {"loraops:approvalPolicy": "auto"}
        )
        == PENDING
    )


def test_another_environments_package_is_neither_approved_nor_listed(registry, aws, tiny_base):
    staging_bucket = "loraops-staging-artifacts"
    aws["s3"].create_bucket(Bucket=staging_bucket)
    aws["s3"].put_bucket_tagging(
        Bucket=staging_bucket, Tagging={"TagSet": [{"Key": TAG_ENVIRONMENT, "Value": "staging"}]}
    )
    aws["sagemaker"].create_model_package_group(
        ModelPackageGroupName="staging--Model",
        Tags=[{"Key": TAG_ENVIRONMENT, "Value": "staging"}, {"Key": "modelType", "Value": "BaseModel"}],
    )
    staging = Registry(aws["sagemaker"], aws["s3"], staging_bucket, REGION)
    prefix = "base/staging--Model/" + "0" * 64 + "/"
    package = staging._create(
        "staging--Model", {TAG_ENVIRONMENT: "staging"}, prefix, {"contentDigest": "sha256:" + "0" * 64}, "staging"
    )
    with pytest.raises(RegistryError, match="belongs to environment staging, not to test"):
        registry.decide(package.arn, approve=True)
    assert registry.describe(package.arn).status == PENDING
    import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    assert [b["base"] for b in registry.tree()] == [GROUP]


def test_migration_moves_groups_tagged_with_an_earlier_child_path_into_the_sdk_form(aws):
    hierarchy = Hierarchy.for_base(GROUP)
    old_key = f"sagemaker:collection-path:{path_id(f'{GROUP}/adapters')}"
    aws["sagemaker"].create_model_package_group(
        ModelPackageGroupName="line", Tags=[{"Key": old_key, "Value": f"{GROUP}/adapters"}]
    )
    assert migrate_member_tags(aws["sagemaker"], GROUP) == ["line"]
    arn = aws["sagemaker"].describe_model_package_group(ModelPackageGroupName="line")["ModelPackageGroupArn"]
    tags = {t["Key"]: t["Value"] for t in aws["sagemaker"].list_tags(ResourceArn=arn)["Tags"]}
    (child,) = [c for c in hierarchy.children.values() if c.name == f"{GROUP}-adapters"]
    assert tags == child.member_tag() and child.path == f"{GROUP}/{GROUP}-adapters"
    assert migrate_member_tags(aws["sagemaker"], GROUP) == []


def test_create_model_package_carries_a_client_token_of_the_content(registry, aws, tiny_base):
    """SageMaker's own idempotency (the emulator ignores ClientToken, so the request is what is checked: botocore
    validates it against the real API model before sending)."""
    from loraops.registration import client_token

    requests = []
    registry.sagemaker.meta.events.register(
        "before-parameter-build.sagemaker.CreateModelPackage", lambda params, **_: requests.append(dict(params))
    )
    package = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    (request,) = requests
    digest = package.metadata["contentDigest"]
    assert request["ClientToken"] == client_token(GROUP, digest) and len(request["ClientToken"]) == 36
    assert client_token(GROUP, digest) != client_token(GROUP, "sha256:" + "0" * 64)
