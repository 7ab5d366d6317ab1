"""The lineage manifest: digests, round trip, and refusal of anything that does not match."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from loraops.manifest import MANIFEST_FILE, Manifest, ManifestError, file_digest, folder_weights_digest
from loraops.naming import OutputMode
from tests.helpers import adapter_manifest


def _manifest() -> Manifest:
    return adapter_manifest("sha256:0")


def test_round_trip_and_verify(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json").write_text("{}")
    _manifest().write(tmp_path)
    read = Manifest.read(tmp_path)
    assert read.files == {
        "adapter_model.safetensors": file_digest(tmp_path / "adapter_model.safetensors"),
        "sub/x.json": file_digest(tmp_path / "sub" / "x.json"),
    }
    read.verify(tmp_path)
    (tmp_path / "extra.bin").write_bytes(b"?")
    with pytest.raises(ManifestError, match=r"extra \['extra.bin'\]"):
        read.verify(tmp_path)


def test_weights_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a")
    first = folder_weights_digest(tmp_path)
    (tmp_path / "config.json").write_text('{"changed": true}')
    assert folder_weights_digest(tmp_path) == first  # only weights count
    (tmp_path / "model.safetensors").write_bytes(b"b")
    assert folder_weights_digest(tmp_path) != first
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no weight files"):
        folder_weights_digest(empty)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no manifest"),
        ("{oops", "is not valid JSON"),
        ("[]", "is not a JSON object"),
        (json.dumps({"schema_version": 99}), "schema_version 99"),
        (json.dumps({"schema_version": 2, "surprise": 1}), r"unknown fields \['surprise'\]"),
        (json.dumps({"schema_version": 2}), "no 'output_mode', 'base_model_id', "),
        (json.dumps({"schema_version": 2, "output_mode": "zip"}), "'zip' is not a valid OutputMode"),
    ],
)
def test_bad_manifests_are_refused(tmp_path, content, message):
    if content is not None:
        (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(ManifestError, match=message):
        Manifest.read(tmp_path)


def test_output_mode_reads_back_as_the_registry_vocabulary(tmp_path):
    _manifest().write(tmp_path)
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["output_mode"] == "adapter"
    assert Manifest.read(tmp_path).output_mode is OutputMode.ADAPTER


def test_non_finite_numbers_are_refused_both_ways(tmp_path):
    """Strict JSON: a NaN metric is never written, and a file holding one is not read."""
    manifest = _manifest()
    manifest.metrics = {"validation_loss": float("nan")}
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        manifest.write(tmp_path)
    assert not (tmp_path / MANIFEST_FILE).exists()
    _manifest().write(tmp_path)
    text = (tmp_path / MANIFEST_FILE).read_text().replace('"metrics": {}', '"metrics": {"loss": NaN}')
    (tmp_path / MANIFEST_FILE).write_text(text)
    with pytest.raises(ManifestError, match="NaN is not valid JSON"):
        Manifest.read(tmp_path)


def test_from_json_is_what_read_parses_and_names_where_it_was(tmp_path):
    """One parser for every reader: a manifest's bytes give the manifest :meth:`Manifest.read` gives, and errors
    name the place the caller passes (the registry passes the S3 key)."""
    _manifest().write(tmp_path)
    text = (tmp_path / MANIFEST_FILE).read_bytes()
    assert Manifest.from_json(text, "anywhere") == Manifest.read(tmp_path)
    data = json.loads(text)
    del data["dataset_digest"]
    with pytest.raises(ManifestError, match=r"^s3://b/k: training manifest: no 'dataset_digest'$"):
        Manifest.from_json(json.dumps(data), "s3://b/k: training manifest")


def test_schema_version_1_is_refused_by_name(tmp_path):
    """A schema 1 manifest (the first trainer's: ``dataset_records``/``validation_records``, no ``data``) is refused
    naming its version, not parsed loosely."""
    data = asdict(_manifest())
    data.update(schema_version=1, dataset_records=10, validation_records=1)
    del data["data"]
    with pytest.raises(ManifestError, match="schema_version 1, expected 2"):
        Manifest.from_json(json.dumps(data), "old")
