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


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step, look for NaN/inf gradients (gradients are all-reduced first, so every rank
    decides alike).

    With ``allowed`` > 0 the check is synchronous: such a step is skipped (its gradients dropped) and more than
    ``allowed`` of them stop the run. With ``allowed`` = 0 (the default) the run stops at the first one anyway,
    so on CUDA the flag is copied to the host without waiting and read one step later: no stall per step.
    """

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.skipped: list[int] = []
        self._pending: tuple[int, torch.Tensor, torch.cuda.Event] | None = None

    @staticmethod
    def _all_finite(model: Any) -> torch.Tensor | None:
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return None
        return torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()

    def _fail(self, step: int) -> None:
        raise TrainingFault(
            f"non-finite loss or gradient at optimizer step {step} ({len(self.skipped)} such step(s), "
            f"max_nonfinite_steps={self.allowed}): the run diverged; lower learning_rate or check the data"
        )

    def _check_pending(self) -> None:
        if self._pending is not None:
            step, flag, event = self._pending
            self._pending = None
            event.synchronize()  # long done: it was recorded a whole step ago
            if not bool(flag):
                self.skipped.append(step)
                self._fail(step)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._check_pending()
        finite = self._all_finite(model)
        if finite is None:
            return
        step = state.global_step + 1
        if self.allowed == 0 and finite.is_cuda:
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(finite, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (step, host, event)
            return
        if bool(finite):
            return
        self.skipped.append(step)
        for parameter in model.parameters():
            parameter.grad = None  # the optimizer skips parameters without a gradient
        if len(self.skipped) > self.allowed:
            self._fail(step)
        logger.warning(
            "skipped optimizer step %d: non-finite gradient (%d of %d allowed)", step, len(self.skipped), self.allowed
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._check_pending()


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
        self._group: Any = None  # a gloo group: the ranks agree on the host, never stalling the GPUs

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
        if _distributed() and self._group is None:
            self._group = torch.distributed.new_group(backend="gloo")

    def on_train_end(self, args, state, control, **kwargs):
        self.in_training = False

    def _any_rank(self) -> bool:
        """True when SIGTERM reached any rank: all of them stop at the same step."""
        if self._group is None:
            return self.requested
        flag = torch.tensor([int(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank():
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
        return control


def run_fingerprint(hyperparameters: dict[str, Any], base_digest: str, dataset_digest: str) -> dict[str, Any]:
    """What makes two runs the same training: settings that affect the weights, base and data digests."""
    settings = {k: v for k, v in sorted(hyperparameters.items()) if k not in NOT_FINGERPRINTED}
    return {"base_weights_digest": base_digest, "dataset_digest": dataset_digest, "settings": settings}


#: Settings renamed since a fingerprint may have been written: old name -> current name (a checkpoint written
#: before transformers 5 deprecated ``gradient_checkpointing`` still resumes).
RENAMED_SETTINGS = {"gradient_checkpointing": "activation_checkpointing"}


def _current_names(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with renamed keys under their current names (a current name already present wins)."""
    renamed = {RENAMED_SETTINGS.get(k, k): v for k, v in settings.items() if k in RENAMED_SETTINGS}
    return {**renamed, **{k: v for k, v in settings.items() if k not in RENAMED_SETTINGS}}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = [
        f"{k} ({old.get(k)!r} -> {new.get(k)!r})"
        for k in ("base_weights_digest", "dataset_digest")
        if old.get(k) != new.get(k)
    ]
    a, b = _current_names(old.get("settings", {})), new.get("settings", {})
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
