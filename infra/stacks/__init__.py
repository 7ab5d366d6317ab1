"""One focused stack per concern; :mod:`infra.stage` wires them for an environment."""
