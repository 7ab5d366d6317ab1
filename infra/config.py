"""Typed, validated per-environment configuration read from ``cdk.json`` context.

The context key ``loraops:environments`` maps an environment name to its settings. Everything is
validated before any construct is built; an error names the offending key, e.g.
``loraops:environments.prod.region: ...``. Here: loading and the checks across environments (promotion peers,
one environment per account and region); one environment's fields in ``infra.environment_config``, its sections in
``infra.config_sections``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from infra.config_sections import PromotionPeer
from infra.environment_config import EnvironmentConfig
from loraops.naming import ENVIRONMENT_NAME, NamingError

CONTEXT_KEY = "loraops:environments"
ENV_SELECTOR_KEY = "env"


class ConfigError(ValueError):
    """The cdk.json configuration is missing or invalid; the message names the key."""


def _format_errors(env: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in (CONTEXT_KEY, env, *item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_environment(name: str, raw: Any) -> EnvironmentConfig:
    """Validate one environment's raw context dict."""
    if not ENVIRONMENT_NAME.match(name):
        raise ConfigError(f"{CONTEXT_KEY}.{name}: environment names are 1-16 lowercase letters/digits")
    if not isinstance(raw, dict):
        raise ConfigError(f"{CONTEXT_KEY}.{name}: expected an object, got {type(raw).__name__}")
    try:
        return EnvironmentConfig(name=name, **raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(name, error)) from None
    except (NamingError, TypeError) as error:
        raise ConfigError(f"{CONTEXT_KEY}.{name}: {error}") from None


def load_environments(context: dict[str, Any], selected: str | None = None) -> list[EnvironmentConfig]:
    """All configured environments, or only ``selected`` (from ``-c env=<name>``)."""
    raw = context.get(CONTEXT_KEY)
    if raw is None:
        raise ConfigError(f"The CDK context key: {CONTEXT_KEY} is undefined.")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{CONTEXT_KEY}: expected a non-empty object of environments")
    if selected is not None:
        if selected not in raw:
            known = ", ".join(sorted(raw))
            raise ConfigError(f"-c {ENV_SELECTOR_KEY}={selected}: unknown environment (configured: {known})")
        check_no_shared_account_region(raw)
        return [link_promotions(parse_environment(selected, raw[selected]), raw)]
    environments = [parse_environment(name, value) for name, value in raw.items()]
    check_no_shared_account_region(raw)
    return [link_promotions(config, raw) for config in environments]


def _peer(name: str, raw: Any, where: str) -> PromotionPeer:
    try:
        return PromotionPeer(name=name, account=raw.get("account"), region=raw.get("region"))
    except ValidationError as error:
        raise ConfigError(f"{where}: environment {name!r} has no valid account and region ({error})") from None


def link_promotions(config: EnvironmentConfig, raw: dict[str, Any]) -> EnvironmentConfig:
    """Resolve ``promote_from`` in both directions from the raw context (also when one environment is selected):
    the target learns its source's account and region, the source the targets it grants read to."""
    where = f"{CONTEXT_KEY}.{config.name}.promote_from"
    if config.promote_from is not None:
        if config.promote_from == config.name or not isinstance(raw.get(config.promote_from), dict):
            known = ", ".join(sorted(n for n in raw if n != config.name))
            raise ConfigError(f"{where}: {config.promote_from!r} is not another environment (configured: {known})")
        config._promotion_source = _peer(config.promote_from, raw[config.promote_from], where)
    config._promotion_targets = tuple(
        _peer(name, env, f"{CONTEXT_KEY}.{name}.promote_from")
        for name, env in sorted(raw.items())
        if isinstance(env, dict) and env.get("promote_from") == config.name and name != config.name
    )
    return config


def check_no_shared_account_region(raw: dict[str, Any]) -> None:
    """Registry names (package groups, collections) are per account and region, not per environment: two
    environments there would share them, so loraops refuses the configuration rather than scope every name."""
    seen: dict[tuple[Any, Any], str] = {}
    for name, env in raw.items():
        if not isinstance(env, dict):
            continue
        other = seen.setdefault((env.get("account"), env.get("region")), name)
        if other != name:
            raise ConfigError(
                f"{CONTEXT_KEY}: environments {other!r} and {name!r} share account {env.get('account')} and region "
                f"{env.get('region')}; their model package groups and collections would collide. Give each "
                "environment its own account or region"
            )
