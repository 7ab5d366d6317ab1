"""Atomic publication of a run's artifacts into the model folder.

Artifacts are written into a staging folder beside the model folder (same file system, outside what
SageMaker uploads) and published by one ``rename`` onto the empty model folder: a reader sees either
nothing or everything. A run killed mid-write (SIGKILL, a reclaimed spot instance) leaves only the
staging folder, which the next run of the same model folder removes once the process named in it has exited.
Where the model folder is a mount point (SageMaker local mode mounts ``/opt/ml/model``) it cannot be replaced by
a rename: staging then happens inside it, and the entries are moved in with every ``loraops-manifest.json`` last,
so a reader that requires the manifest never sees a partial artifact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from loraops.manifest import MANIFEST_FILE

logger = logging.getLogger(__name__)

STAGING_MARK = ".loraops-staging-"


class PublishError(RuntimeError):
    """The model folder cannot receive the artifacts (not empty, not a folder)."""


def check_model_dir(model_dir: Path) -> None:
    """Refuse (before training) a model folder that already holds files."""
    if model_dir.exists() and not model_dir.is_dir():
        raise PublishError(f"model_dir {model_dir} is not a folder")
    if model_dir.is_dir():
        entries = sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(STAGING_MARK))
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise PublishError(
                f"model_dir {model_dir} is not empty ({len(entries)} entries: {shown}); "
                "publish into an empty or new folder"
            )


def _staging_place(model_dir: Path) -> tuple[Path, str]:
    """The folder staging folders of ``model_dir`` live in, and the prefix of their names (``-<pid>`` follows):
    beside the model folder, or inside it where it is a mount point."""
    if os.path.ismount(model_dir):
        return model_dir, STAGING_MARK
    return model_dir.parent, f"{STAGING_MARK}{model_dir.name}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _left_by_exited_run(name: str, prefix: str) -> bool:
    """A staging folder of this model folder (exactly ``<prefix><pid>``: not one of a model folder whose name starts
    alike) whose process has exited."""
    pid = name.removeprefix(prefix)
    return name.startswith(prefix) and pid.isdigit() and not _alive(int(pid))


def _move_in(staging: Path, model_dir: Path) -> None:
    """Mount-point fallback: entries moved into ``model_dir``, manifests last."""
    items = sorted(staging.rglob("*"), key=lambda p: (p.name == MANIFEST_FILE, len(p.parts)))
    for item in items:
        if item.is_file():
            target = model_dir / item.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            item.rename(target)
    shutil.rmtree(staging)


@contextlib.contextmanager
def staged(model_dir: Path) -> Iterator[Path]:
    """A staging folder to write into; on normal exit it becomes ``model_dir``, on any error it is removed."""
    model_dir = Path(model_dir).absolute()
    check_model_dir(model_dir)
    place, prefix = _staging_place(model_dir)
    if place.is_dir():
        for stale in [p for p in place.iterdir() if _left_by_exited_run(p.name, prefix)]:
            logger.warning("removing %s left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
    place.mkdir(parents=True, exist_ok=True)
    staging = place / f"{prefix}{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
        check_model_dir(model_dir)
        if staging.parent == model_dir:
            _move_in(staging, model_dir)
        else:
            # rename(2) atomically replaces an empty directory (or creates the name).
            os.rename(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
