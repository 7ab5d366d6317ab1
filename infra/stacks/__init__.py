"""One focused stack per concern; :mod:`infra.environment` wires them for an environment."""
