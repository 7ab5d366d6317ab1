"""What every loraops Lambda function shares: its logger and its idempotency table (AWS Lambda Powertools)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig


def logger(function: str) -> Logger:
    return Logger(service=f"loraops-{function}")


def idempotency(key_jmespath: str, expires_after_seconds: int = 7 * 24 * 3600) -> dict[str, Any]:
    """Keyword arguments for Powertools' ``@idempotent``: records in ``$IDEMPOTENCY_TABLE`` keyed on the event's
    ``key_jmespath``; a second delivery while the first runs is refused, and after it gets the first's result."""
    return {
        "config": IdempotencyConfig(
            event_key_jmespath=key_jmespath,
            raise_on_no_idempotency_key=True,
            expires_after_seconds=expires_after_seconds,
        ),
        "persistence_store": DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"]),
    }


def required(event: dict[str, Any], *keys: str) -> list[str]:
    """The event's string values for ``keys``, or one error naming every key that is missing or not a string."""
    missing = [k for k in keys if not isinstance(event.get(k), str) or not event.get(k)]
    if missing:
        from loraops.packages import RegistryError

        raise RegistryError(f"the event needs non-empty string fields {missing}; it has {sorted(event)}")
    return [event[k] for k in keys]
