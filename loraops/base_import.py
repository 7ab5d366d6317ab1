"""Import a base model into ``base/<group>/<content hex>/`` uncompressed and register it, from a local folder,
another S3 location or the Hugging Face Hub.

Every source goes through the same steps, so the Hub shares the code after its download:

1. **select**: one exclusion list for every source (:func:`loraops.model_files.served_files`: no ``.git/``, caches,
   ``original/``, ``*.pth``, nor ``*.bin`` beside ``*.safetensors``);
2. **digest and check**: read each file once, streaming, for its SHA-256 (the Hub source stages the bytes under
   ``staging/`` as it reads them, because the final key depends on the digest of every file), and check each
   ``.safetensors`` header against the file's size;
3. **write once**: put each file at ``base/<group>/<content hex>/<name>`` with a conditional write (never replacing
   an object; a key already holding the same digest is kept). The content digest covers every served file
   (weights, config, tokenizer, generation config): other bytes make another prefix and another version;
4. **record**: write ``loraops-base.json`` (per-file digests, sizes, source, licence) once, last, then register.

An import cut short leaves no ``loraops-base.json``, so nothing registers it; running it again finishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from loraops import s3_layout
from loraops.artifacts import ArtifactError, write_once
from loraops.base_sources import HubRepo, Progress, Source, Target
from loraops.manifest import BASE_MANIFEST, MANIFEST_FILE, WEIGHT_SUFFIXES, combined_weights_digest, content_digest
from loraops.model_files import check_safetensors, served_files
from loraops.naming import base_group_name
from loraops.packages import Package, RegistryError
from loraops.registry import Registry


def _checked(files: dict[str, int], source: Source) -> dict[str, int]:
    bad = sorted(n for n in files if n.startswith("/") or ".." in n.split("/"))
    if bad:
        raise RegistryError(f"{source.description}: file names that leave the folder: {bad}")
    files = {n: size for n, size in served_files(files).items() if n not in (BASE_MANIFEST, MANIFEST_FILE)}
    if "config.json" not in files:
        raise RegistryError(f"{source.description}: not a Hugging Face model folder (no config.json)")
    if not any(n.endswith(WEIGHT_SUFFIXES) and "/" not in n for n in files):
        raise RegistryError(f"{source.description}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    return files


def upload_base(
    registry: Registry,
    source: Source,
    model_id: str,
    licence: str = "",
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
) -> str:
    """Steps 1-3 of the module docstring, without registering. Returns the content digest (the version's name).
    ``total`` is told the bytes the import will read and write (each file is read once and written once)."""
    group = base_group_name(model_id)
    target = Target(registry.s3, registry.bucket, s3_layout.staging_prefix("base", uuid.uuid4().hex), progress)
    try:
        files = _checked(source.list(), source)
        if total:
            total(2 * sum(files.values()))
        digests = {name: source.digest(name, target) for name in files}
        for name in files:
            if name.endswith(".safetensors"):
                check_safetensors(
                    f"{source.description}/{name}",
                    files[name],
                    lambda offset, length, name=name: source.read(name, offset, length, target),
                )
        content = content_digest(digests, source.description)
        weights = combined_weights_digest(digests, source.description)
        prefix = s3_layout.base_model_prefix(group, content)
        for name in files:
            body = source.open(name, target)
            try:
                write_once(
                    registry.s3,
                    registry.bucket,
                    prefix + name,
                    body,
                    files[name],
                    digests[name],
                    lambda n, name=name: target.advance(f"store {name}", n),
                )
            finally:
                body.close()
    except ArtifactError as error:
        raise RegistryError(str(error)) from None
    finally:
        source.cleanup(target)
    manifest = {
        "model_id": model_id,
        "content_digest": content,
        "weights_digest": weights,
        "files": digests,
        "sizes": files,
        "source": source.description,
        "licence": licence,
    }
    registry.write_base_manifest(prefix, manifest)
    return content


def import_base(
    registry: Registry,
    source: Source,
    model_id: str,
    licence: str = "",
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
) -> Package:
    """Import ``source`` under ``base/`` and register it (the same bytes again -> the package already there)."""
    if isinstance(source, HubRepo) and not licence:
        raise RegistryError(
            f"importing {source.repo_id} from the Hub records the licence you accepted for it: name it "
            "(e.g. --licence llama2)"
        )
    return registry.register_base(model_id, upload_base(registry, source, model_id, licence, progress, total))
