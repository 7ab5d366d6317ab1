"""An adapter is packed as the one ``.tar.gz`` an inference component names (issue #21): exactly the adapter's files,
the same bytes for the same files, and no archive for a merged model. Against moto's server over HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

from loraops import s3_layout
from loraops.adapter_archive import adapter_archive
from loraops.manifest import MANIFEST_FILE
from loraops.naming import TAG_OUTPUT_MODE, OutputMode
from tests.registry.conftest import ADAPTER_GROUP, MERGED_GROUP
from tests.registry.finetune_helpers import JOB, _approved_base, _job, _keys, _manifest, _read
from tests.registry.stand_ins import CallRecorder


def test_the_adapter_archive_holds_exactly_the_adapters_files_and_no_byte_of_the_base(
    registry, aws, tiny_base, adapter_output
):
    base = _approved_base(registry, tiny_base)
    job_prefix = _job(aws, adapter_output)
    recorder = CallRecorder(aws["s3"])
    package = registry.register_finetune(ADAPTER_GROUP, job_prefix, JOB)

    key = package.model_data_prefix + s3_layout.ADAPTER_ARCHIVE
    data = _read(aws, key)
    assert package.metadata["adapterArchive"] == s3_layout.ADAPTER_ARCHIVE
    assert package.metadata["archiveDigest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    files = _manifest(adapter_output)["files"]
    assert sorted(members) == sorted(files)
    assert all(members[name] == (adapter_output / name).read_bytes() for name in files)
    # zero bytes of the base: nothing under base/ is read or copied, and no base weight file is in the version
    touched = [params for op, params in recorder.of("s3") if op in ("GetObject", "UploadPartCopy", "CopyObject")]
    assert touched and not [p for p in touched if f"/{s3_layout.BASE}" in str(p)]
    assert base.model_data_prefix.startswith(s3_layout.BASE)
    assert "model.safetensors" not in members and len(data) < (tiny_base / "model.safetensors").stat().st_size


def test_the_same_files_pack_to_the_same_archive_bytes(adapter_output, monkeypatch):
    import time

    files = _manifest(adapter_output)["files"]
    openers = {n: (lambda p=adapter_output / n: open(p, "rb")) for n in files}  # noqa: SIM115
    sizes = {n: (adapter_output / n).stat().st_size for n in files}
    first, size, digest = adapter_archive(openers, sizes)
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)  # packed a day later, the files listed in another order
    second, _, again = adapter_archive(dict(reversed(list(openers.items()))), sizes)
    with first, second:
        assert digest == again and first.read() == second.read() and size > 0


def test_a_merged_model_has_no_archive(registry, aws, tiny_base, adapter_output, tmp_path):
    """Only adapters are named by an ArtifactUrl; a merged version is served from its uncompressed prefix."""
    _approved_base(registry, tiny_base)
    merged = tmp_path / "merged"
    shutil.copytree(adapter_output, merged)
    manifest = _manifest(merged)
    manifest["output_mode"] = OutputMode.MERGED.value
    (merged / MANIFEST_FILE).write_text(json.dumps(manifest))
    tags = aws["sagemaker"].list_tags(
        ResourceArn=aws["sagemaker"].describe_model_package_group(ModelPackageGroupName=MERGED_GROUP)[
            "ModelPackageGroupArn"
        ]
    )["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}[TAG_OUTPUT_MODE] == "merged"
    package = registry.register_finetune(
        MERGED_GROUP, _job(aws, merged, mode=OutputMode.MERGED, group=MERGED_GROUP), JOB
    )
    assert "adapterArchive" not in package.metadata
    assert s3_layout.ADAPTER_ARCHIVE not in [k.rsplit("/", 1)[-1] for k in _keys(aws, package.model_data_prefix)]
    registry.verify_content(package)
