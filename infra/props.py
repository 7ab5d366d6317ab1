"""The inputs the stacks share, narrow and typed: each stack's own props (beside it in ``infra/stacks/``) extend
these with only what that stack reads; ``infra.app_factory`` builds them all from ``EnvironmentConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.config import PromotionPeer


@dataclass(frozen=True, kw_only=True)
class EnvironmentBasics:
    """What the shared parts of every stack read: names (``<prefix>-<purpose>``), region, removal and retention."""

    name: str
    prefix: str
    region: str
    removal_policy: Literal["destroy", "retain"]
    log_retention_days: int


@dataclass(frozen=True, kw_only=True)
class Alerting(EnvironmentBasics):
    """Where a stack's alarms go: the configured topic, or ``<prefix>-alarms`` (with an optional email)."""

    alarm_topic_arn: str | None = None
    alarm_email: str | None = None


@dataclass(frozen=True, kw_only=True)
class PromotionProps:
    """What promotion grants read (``infra.promotion``): this environment's bucket and groups, its source and
    targets."""

    region: str
    artifact_bucket_name: str
    groups: tuple[str, ...]
    source: PromotionPeer | None = None
    targets: tuple[PromotionPeer, ...] = ()
