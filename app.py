#!/usr/bin/env python3
"""CDK entry point: `cdk synth` (every environment) or `cdk synth -c env=dev` (one)."""

import sys

from infra.app_factory import build_app
from infra.config import ConfigError

try:
    app, _ = build_app()
except ConfigError as error:
    sys.exit(f"loraops: {error}")
app.synth()
