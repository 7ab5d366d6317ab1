"""Environment variables set for a while, then put back as they were (unset where they were unset)."""

from __future__ import annotations

import os


def set_environ(values: dict[str, str]) -> dict[str, str | None]:
    """Set ``values`` in ``os.environ``; returns what they were before, for :func:`restore_environ`."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    return saved


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put back what :func:`set_environ` returned."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
