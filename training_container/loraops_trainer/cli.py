"""``loraops-train``: the trainer's entry point (SageMaker runs it through ``train.py``).

Exit status 0 with ``{"metrics": ...}`` on stdout (rank 0 also prints one ``loraops metric <name>=<value>;`` line
per final metric, the form SageMaker metric definitions read: see :func:`metric_lines`), or 2 with
``train: error: <reason>`` on stderr. Every failure, of any kind, also writes its one-line reason to
``/opt/ml/output/failure`` (SageMaker shows it as the job's FailureReason) where that folder exists;
``LORAOPS_FAILURE_FILE`` names another place.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

FAILURE_FILE = Path("/opt/ml/output/failure")
EXPECTED_ERRORS = ("ConfigError", "DataError", "ManifestError", "PublishError", "TrainingFault", "NamingError")


def failure_file(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("LORAOPS_FAILURE_FILE") or FAILURE_FILE)


def record_failure(reason: str) -> None:
    path = failure_file()
    if path.parent.is_dir():
        path.write_text(reason[:1024])


def one_line(error: BaseException) -> str:
    """The reason, on one line; unexpected errors keep their type name."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if type(error).__name__ in EXPECTED_ERRORS else f"{type(error).__name__}: {text}"


def metric_lines(metrics: dict[str, float]) -> list[str]:
    """The final metrics in the form SageMaker metric definitions (and so tuning objectives) read:
    ``loraops metric validation_loss=2.71;`` matches the regex ``loraops metric validation_loss=([-+.0-9eE]+);``."""
    return [f"loraops metric {name}={float(value)!r};" for name, value in metrics.items()]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    # Growable segments instead of fixed blocks: the memory profile plans close to the budget, and packed
    # micro-batches of varying length fragment fixed blocks (read when CUDA first allocates; a user's setting wins).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        from loraops_trainer.hyperparameters import load_settings
        from loraops_trainer.run import train
    except ImportError as error:
        print(
            f"train: error: {error}; the trainer needs torch and its pinned dependencies: "
            "pip install torch==2.13.0 'loraops[train]' (or use the training image)",
            file=sys.stderr,
        )
        return 2
    try:
        metrics = train(load_settings(argv))
    except SystemExit:
        raise  # --help
    except BaseException as error:  # noqa: BLE001 - every failure gets its one line and the failure file
        reason = one_line(error)
        if type(error).__name__ not in EXPECTED_ERRORS:
            logging.getLogger("loraops_trainer").exception("training failed")
        print(f"train: error: {reason}", file=sys.stderr)
        record_failure(reason)
        return 130 if isinstance(error, KeyboardInterrupt) else 2
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(metric_lines(metrics)))
    print(json.dumps({"metrics": metrics}))
    return 0
