"""The manifest written beside each artifact: what the run was made from (base, data, settings, code), its metrics."""

from __future__ import annotations

import functools
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import loraops
from loraops.manifest import Manifest
from loraops.naming import OutputMode
from loraops_trainer.inputs import PreparedData
from loraops_trainer.settings import Settings


def build_manifest(
    settings: Settings,
    mode: OutputMode,
    base_digest: str,
    prepared: PreparedData,
    metrics: dict[str, Any],
    job_name: str | None,
) -> Manifest:
    config = settings.config
    return Manifest(
        output_mode=mode,
        base_model_id=config.base_model_id,
        base_weights_digest=base_digest,
        base_model_package_arn=config.base_model_package_arn or None,
        dataset_name=config.dataset_name,
        dataset_digest=prepared.digest,
        data=_with_trained(prepared.summary(), metrics),
        hyperparameters=settings.hyperparameters,
        code_version=code_version(),
        metrics={k: float(v) for k, v in metrics.items()},
        training_job=job_name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _with_trained(summary: dict[str, dict[str, Any]], metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The training channel's summary with the samples its steps consumed (the rest of the channel was not)."""
    training = {**summary["training"], "samples_trained": int(metrics["train_samples"])}
    return {**summary, "training": training}


@functools.cache
def code_version() -> str:
    """``loraops <version> (<commit>)``: the commit from the image build (``LORAOPS_GIT_SHA``) or the checkout."""
    sha = os.environ.get("LORAOPS_GIT_SHA", "")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"loraops {loraops.__version__}" + (f" ({sha})" if sha else "")
