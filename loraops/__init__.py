"""loraops: names, S3 layout and artifact schemas shared by the stacks, functions, trainer and server.

This package is the single source of truth for everything two components must agree on. It declares no
dependencies, so every container and Lambda can install it without pulling anything else: its modules import the
standard library at module level and boto3/botocore only where they call AWS, except ``loraops.functions`` (the
Lambda functions' logger and idempotency), which needs Powertools; ``loraops.cli`` needs the ``cli`` extra.
"""

__version__ = "0.2.0"
