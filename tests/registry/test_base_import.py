"""Importing a base model from a local folder, another S3 location and the Hugging Face Hub: the same digest,
the same layout, nothing half-written. The Hub is a local HTTP stand-in that speaks the Hub's API (model info with
``?blobs=true``, ``resolve`` with a redirect to a file host on another port, bearer tokens): the real Hub cannot
be reached from CI, and Llama-2 needs an accepted licence."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from loraops import s3_layout
from loraops.base_import import import_base
from loraops.base_sources import HubRepo, LocalFolder, S3Folder, source_from
from loraops.manifest import BASE_MANIFEST, folder_content_digest, folder_weights_digest
from loraops.packages import RegistryError
from tests.registry.conftest import BUCKET, MODEL_ID

GROUP = "meta-llama--Llama-2-7b-hf"
SOURCE_BUCKET = "loraops-test-source"
TOKEN = "hf_test_token"


def _keys(aws, prefix: str, bucket: str = BUCKET) -> set[str]:
    return {o["Key"] for o in aws["s3"].list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def _upload_folder(aws, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            aws["s3"].upload_file(str(path), bucket, prefix + str(path.relative_to(folder)))


def test_s3_source_is_streamed_with_the_local_digest(registry, aws, tiny_base):
    aws["s3"].create_bucket(Bucket=SOURCE_BUCKET)
    _upload_folder(aws, tiny_base, SOURCE_BUCKET, "models/llama/")
    aws["s3"].put_object(Bucket=SOURCE_BUCKET, Key="models/llama/sub/", Body=b"")  # a console "folder" object
    seen: dict[str, int] = {}
    package = import_base(
        registry,
        source_from(f"s3://{SOURCE_BUCKET}/models/llama", aws["s3"]),
        MODEL_ID,
        licence="llama2",
        progress=lambda name, n: seen.__setitem__(name, seen.get(name, 0) + n),
    )
    digest = folder_content_digest(tiny_base)
    prefix = s3_layout.base_model_prefix(GROUP, digest)
    assert package.metadata["contentDigest"] == digest and package.model_data_prefix == prefix
    assert package.metadata["weightsDigest"] == folder_weights_digest(tiny_base)
    local = {str(p.relative_to(tiny_base)) for p in tiny_base.rglob("*") if p.is_file()}
    assert _keys(aws, prefix) == {prefix + n for n in local} | {prefix + BASE_MANIFEST}
    sizes = {str(p.relative_to(tiny_base)): p.stat().st_size for p in tiny_base.rglob("*") if p.is_file()}
    assert seen == {f"{phase} {n}": size for n, size in sizes.items() for phase in ("hash", "store")}
    manifest = json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=prefix + BASE_MANIFEST)["Body"].read())
    assert manifest["source"] == f"s3://{SOURCE_BUCKET}/models/llama/" and manifest["licence"] == "llama2"
    again = import_base(registry, S3Folder(f"s3://{SOURCE_BUCKET}/models/llama/", aws["s3"]), MODEL_ID)
    assert again.arn == package.arn


def test_a_source_that_is_not_a_model_is_refused_and_nothing_is_written(registry, aws, tiny_base):
    aws["s3"].create_bucket(Bucket=SOURCE_BUCKET)
    _upload_folder(aws, tiny_base, SOURCE_BUCKET, "partial/")
    aws["s3"].delete_object(Bucket=SOURCE_BUCKET, Key="partial/config.json")
    with pytest.raises(RegistryError, match=r"not a Hugging Face model folder \(no config.json\)"):
        import_base(registry, S3Folder(f"s3://{SOURCE_BUCKET}/partial/", aws["s3"]), MODEL_ID)
    assert _keys(aws, "") == set()
    with pytest.raises(RegistryError, match="is not a folder"):
        import_base(registry, LocalFolder(tiny_base / "nowhere"), MODEL_ID)


def test_an_import_cut_short_registers_nothing_and_a_rerun_finishes_it(registry, aws, tiny_base, monkeypatch):
    calls = []
    original = LocalFolder.open

    def open_then_die(self, name, target):
        if len(calls) == 1:
            raise ConnectionError("network gone")
        calls.append(name)
        return original(self, name, target)

    monkeypatch.setattr(LocalFolder, "open", open_then_die)
    with pytest.raises(ConnectionError):
        import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    prefix = s3_layout.base_model_prefix(GROUP, folder_content_digest(tiny_base))
    assert len(_keys(aws, prefix)) == 1 and prefix + BASE_MANIFEST not in _keys(aws, prefix)
    with pytest.raises(RegistryError, match="no base manifest"):
        registry.register_base(MODEL_ID, folder_content_digest(tiny_base))
    assert aws["sagemaker"].list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"] == []
    monkeypatch.setattr(LocalFolder, "open", original)
    package = import_base(registry, LocalFolder(tiny_base), MODEL_ID)
    assert package.version == 1 and prefix + BASE_MANIFEST in _keys(aws, prefix)


class _Hub:
    """The Hub's API for one repository (``?blobs=true`` model info, ``resolve`` redirecting to a file host)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.requests = folder, []
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.siblings = [{"rfilename": str(p.relative_to(folder)), "size": p.stat().st_size} for p in files]
        self.siblings += [
            {"rfilename": ".gitattributes", "size": 10},
            {"rfilename": "original/consolidated.00.pth", "size": 10},
            {"rfilename": "pytorch_model.bin", "size": 10},  # the same weights again; safetensors win
        ]
        self.files = self._serve(self._file_handler())
        self.api = self._serve(self._api_handler())

    def _serve(self, handler) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def url(self, server) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    def _api_handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append(("api", self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(401)
                elif self.path == f"/api/models/{MODEL_ID}/revision/main?blobs=true":
                    body = json.dumps({"sha": "c0ffee" * 6 + "beef", "siblings": hub.siblings}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path.startswith(f"/{MODEL_ID}/resolve/{'c0ffee' * 6}beef/"):
                    self.send_response(302)
                    self.send_header("Location", hub.url(hub.files) + "/" + self.path.rsplit("/resolve/", 1)[1])
                    self.end_headers()
                else:
                    self.send_error(404)

        return Handler

    def _file_handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append(("files", self.path, self.headers.get("Authorization")))
                name = self.path.split("/", 2)[2]
                body = (hub.folder / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        for server in (self.api, self.files):
            server.shutdown()


@pytest.fixture
def hub(tiny_base):
    hub = _Hub(tiny_base)
    yield hub
    hub.close()


def test_hub_import_stages_digests_and_places_like_the_other_sources(registry, aws, tiny_base, hub):
    source = HubRepo(MODEL_ID, token=TOKEN, endpoint=hub.url(hub.api))
    package = import_base(registry, source, MODEL_ID, licence="llama2 (accepted on the Hub by platform-team)")
    digest = folder_content_digest(tiny_base)
    prefix = s3_layout.base_model_prefix(GROUP, digest)
    assert package.metadata["contentDigest"] == digest
    assert package.metadata["licence"] == "llama2 (accepted on the Hub by platform-team)"
    local = {str(p.relative_to(tiny_base)) for p in tiny_base.rglob("*") if p.is_file()}
    assert _keys(aws, prefix) == {prefix + n for n in local} | {prefix + BASE_MANIFEST}
    assert _keys(aws, s3_layout.STAGING) == set()  # staged bytes removed once placed
    assert all(auth is None for where, _, auth in hub.requests if where == "files"), "token sent to the file host"
    assert not any(".pth" in path or ".bin" in path or ".gitattributes" in path for _, path, _ in hub.requests)
    manifest = json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=prefix + BASE_MANIFEST)["Body"].read())
    assert manifest["source"] == f"hf://{MODEL_ID}@{'c0ffee' * 6}beef"


def test_hub_import_needs_a_licence_and_a_token_and_writes_nothing_without(registry, aws, hub):
    with pytest.raises(RegistryError, match="records the licence you accepted"):
        import_base(registry, HubRepo(MODEL_ID, token=TOKEN, endpoint=hub.url(hub.api)), MODEL_ID)
    with pytest.raises(RegistryError, match=r"the Hub refused .* \(HTTP 401\): accept the model's licence"):
        import_base(registry, HubRepo(MODEL_ID, endpoint=hub.url(hub.api)), MODEL_ID, licence="llama2")
    with pytest.raises(RegistryError, match="has no meta-llama/Llama-2-7b-hf at revision v9"):
        import_base(
            registry, HubRepo(MODEL_ID, "v9", token=TOKEN, endpoint=hub.url(hub.api)), MODEL_ID, licence="llama2"
        )
    assert _keys(aws, "") == set()
