"""``loraops-manifest.json``: the lineage record written next to every fine-tuned artifact.

The trainer writes it; the registration function reads it to register the package and verify the base.
Digests are written ``sha256:<64 hex digits>``. The file is strict JSON (no NaN or Infinity). ``files`` maps
every other file of the artifact folder to its digest, so a reader can check that what it downloaded is what
the job wrote.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from loraops.naming import OutputMode

MANIFEST_FILE = "loraops-manifest.json"
#: What a base import records beside the weights (per-file digests, sizes, source, licence).
BASE_MANIFEST = "loraops-base.json"
#: A fine-tune's evaluation report (ModelMetrics statistics), written by the trainer beside the model.
EVALUATION_FILE = "evaluation.json"
#: The evaluation report's statistics (SageMaker ModelMetrics' ``<problem>_metrics``) and, in them and in the
#: manifest's ``metrics``, the held-out loss: written by the trainer, read at registration.
LANGUAGE_MODELING_METRICS = "language_modeling_metrics"
VALIDATION_LOSS = "validation_loss"
SCHEMA_VERSION = 2
#: Files that hold a Hugging Face model's weights (what the base digest covers).
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match its files."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(text: str | bytes) -> Any:
    """``text`` parsed as strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` raise :class:`ValueError`."""
    return json.loads(text, parse_constant=_refuse_constant)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of one file."""
    with open(path, "rb") as handle:
        return f"sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


def folder_weights_digest(folder: Path) -> str:
    """One digest over a model folder's weight files: names and contents, in name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file()]
    return combined_weights_digest(
        {p.name: file_digest(p) for p in files if p.name.endswith(WEIGHT_SUFFIXES)}, str(folder)
    )


def combined_weights_digest(file_digests: dict[str, str], where: str = "the model") -> str:
    """One digest over the top-level weight files of ``file_digests`` (name -> ``sha256:<hex>``): names and
    digests, in name order. What :func:`folder_weights_digest` computes for a local folder."""
    weights = sorted(n for n in file_digests if "/" not in n and n.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ManifestError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {where}")
    combined = hashlib.sha256()
    for name in weights:
        combined.update(f"{name}\0{file_digests[name]}\n".encode())
    return f"sha256:{combined.hexdigest()}"


def content_digest(file_digests: dict[str, str], where: str = "the model") -> str:
    """One digest over every file a model serves (``file_digests``: relative name -> ``sha256:<hex>``): names and
    digests, in name order. A base version's identity: weights, config, tokenizer and generation config alike, so
    different bytes in any of them make a different version."""
    if not file_digests:
        raise ManifestError(f"no files in {where}")
    combined = hashlib.sha256()
    for name in sorted(file_digests):
        combined.update(f"{name}\0{file_digests[name]}\n".encode())
    return f"sha256:{combined.hexdigest()}"


def folder_content_digest(folder: Path) -> str:
    """:func:`content_digest` of the files a local model folder serves (what an import of it names its version)."""
    from loraops.model_files import served_files

    root = Path(folder)
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    names = served_files({n: s for n, s in sizes.items() if n not in (MANIFEST_FILE, BASE_MANIFEST)})
    return content_digest({n: file_digest(root / n) for n in names}, str(folder))


def folder_file_digests(folder: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict[str, str]:
    """Relative path -> digest for every file under ``folder`` except ``exclude``."""
    root = Path(folder)
    return {
        str(p.relative_to(root)): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in exclude
    }


def recorded_base_weights(folder: Path) -> str:
    """The base weights digest that ``folder``'s manifest records (what a server needs to match an adapter to the
    loaded base); "" where it has no manifest. A manifest :meth:`Manifest.read` refuses raises its
    :class:`ManifestError`."""
    return Manifest.read(folder).base_weights_digest if (Path(folder) / MANIFEST_FILE).is_file() else ""


def recorded_weights_digest(folder: Path) -> str | None:
    """The weights digest that a base import's ``loraops-base.json`` beside the weights records; None where there is
    none."""
    path = Path(folder) / BASE_MANIFEST
    return json.loads(path.read_text())["weights_digest"] if path.is_file() else None


@dataclass
class Manifest:
    """Lineage of one fine-tuned artifact."""

    output_mode: OutputMode
    base_model_id: str
    base_weights_digest: str
    dataset_name: str
    dataset_digest: str
    #: per channel (``training``, ``validation``): source file, records read, samples, dropped (by reason)
    data: dict[str, dict[str, Any]]
    hyperparameters: dict[str, Any]
    code_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    training_job: str | None = None
    base_model_package_arn: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def write(self, folder: Path) -> Path:
        """Record the digests of ``folder``'s files and write the manifest into it."""
        self.files = folder_file_digests(folder)
        path = Path(folder) / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest in ``folder`` (:meth:`from_json`)."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"{path}: no manifest")
        return cls.from_json(path.read_bytes(), str(path))

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """A manifest from its JSON text; ``where`` names it in errors. Refused with :class:`ManifestError`: text
        that is not strict JSON (NaN and Infinity included) or not an object, a ``schema_version`` other than
        :data:`SCHEMA_VERSION`, fields this version does not have, a missing required field, an unknown output
        mode."""
        try:
            data = strict_json(text)
        except ValueError as error:  # JSONDecodeError, a refused constant, bytes that are not UTF-8
            raise ManifestError(f"{where} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{where} is not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{where}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        known = {f.name: f for f in fields(cls)}
        if unknown := sorted(set(data) - set(known)):
            raise ManifestError(f"{where}: unknown fields {unknown}")
        if "output_mode" in data:
            try:
                data["output_mode"] = OutputMode(data["output_mode"])
            except ValueError as error:
                raise ManifestError(f"{where}: {error}") from None
        required = (n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING)
        if missing := [n for n in required if n not in data]:
            raise ManifestError(f"{where}: no {', '.join(repr(n) for n in missing)}")
        return cls(**data)

    def verify(self, folder: Path) -> None:
        """Raise if any listed file is missing or differs, or an unlisted file is present."""
        actual = folder_file_digests(folder)
        if actual != self.files:
            missing = sorted(set(self.files) - set(actual))
            extra = sorted(set(actual) - set(self.files))
            changed = sorted(k for k in set(actual) & set(self.files) if actual[k] != self.files[k])
            raise ManifestError(
                f"{folder}: files differ from manifest (missing {missing}, extra {extra}, changed {changed})"
            )
