"""Fixtures of the trainer tests live in tests/conftest.py (the registry tests share the tiny base)."""
