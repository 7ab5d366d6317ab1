"""Run guards as transformers ``TrainerCallback``\\ s: non-finite steps, SIGTERM, and the resume fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "loraops-run.json"
#: Settings that do not change what is trained (bookkeeping, output format): left out of the fingerprint.
NOT_FINGERPRINTED = frozenset(
    {
        "logging_steps",
        "save_steps",
        "save_total_limit",
        "experiment_name",
        "artifact_s3_uri",
        "mlflow_tracking_uri",
        "sample_generations",
        "max_new_tokens",
        "eval_batches",
        "output_mode",
        "merged_shard_size",
        "base_model_id",
        "base_model_package_arn",
        "dataset_name",
        "max_dropped_fraction",
        "max_nonfinite_steps",
    }
)


class TrainingFault(RuntimeError):
    """Training cannot produce a sound artifact (diverged, interrupted, or mismatched checkpoints)."""


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any process (one tiny all-reduce under torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step: a NaN/inf gradient skips the step (its gradients dropped); more than
    ``allowed`` such steps stop the run. Gradients are all-reduced first, so every rank decides alike."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.skipped: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            return
        step = state.global_step + 1
        self.skipped.append(step)
        for parameter in model.parameters():
            parameter.grad = None  # the optimizer skips parameters without a gradient
        if len(self.skipped) > self.allowed:
            raise TrainingFault(
                f"non-finite loss or gradient at optimizer step {step} ({len(self.skipped)} such "
                f"step(s), max_nonfinite_steps={self.allowed}): the run diverged; lower "
                "learning_rate or check the data"
            )
        logger.warning(
            "skipped optimizer step %d: non-finite gradient (%d of %d allowed)", step, len(self.skipped), self.allowed
        )


def check_finite_weights(model: Any) -> None:
    """Refuse to ship trainable weights that hold NaN or inf."""
    bad = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise TrainingFault(f"{len(bad)} trained tensor(s) hold NaN/inf (first: {bad[0]}); nothing was written")


class TerminationGuard(TrainerCallback):
    """SIGTERM (StopTrainingJob, spot reclaim: SageMaker kills 120 s later) during training: save a
    checkpoint at the end of the current step and stop; outside training: interrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self.in_training = False
        self._previous: Any = None

    def install(self) -> TerminationGuard:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self.in_training:
            raise TrainingFault("received SIGTERM (job stopped or instance reclaimed); nothing was published")
        logger.warning("SIGTERM: saving a checkpoint after this step, then stopping")

    def on_train_begin(self, args, state, control, **kwargs):
        self.in_training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.in_training = False

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.requested, args.device):
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control


def run_fingerprint(hyperparameters: dict[str, Any], base_digest: str, dataset_digest: str) -> dict[str, Any]:
    """What makes two runs the same training: settings that affect the weights, base and data digests."""
    settings = {k: v for k, v in sorted(hyperparameters.items()) if k not in NOT_FINGERPRINTED}
    return {"base_weights_digest": base_digest, "dataset_digest": dataset_digest, "settings": settings}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = [
        f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
        for k in ("base_weights_digest", "dataset_digest")
        if old.get(k) != new.get(k)
    ]
    a, b = old.get("settings", {}), new.get("settings", {})
    found += [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return found


def claim_checkpoint_dir(folder: Path, fingerprint: dict[str, Any], has_checkpoints: bool) -> None:
    """Record this run's fingerprint in ``folder``; refuse to resume checkpoints of a different run."""
    path = folder / FINGERPRINT_FILE
    if has_checkpoints:
        if not path.is_file():
            raise TrainingFault(
                f"checkpoint_dir {folder} holds checkpoints without {FINGERPRINT_FILE}; they may "
                "belong to another run: use a new checkpoint_dir or empty it"
            )
        old = json.loads(path.read_text())
        if differences := _differences(old, fingerprint):
            raise TrainingFault(
                f"checkpoint_dir {folder} holds checkpoints of a different run: "
                f"{'; '.join(differences)}. Use a new checkpoint_dir or empty it"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True, allow_nan=False) + "\n")
    tmp.replace(path)


def weights_digest(model: Any) -> str:
    """sha256 of the trainable tensors (names and bytes): equal on every rank when DDP works."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"
