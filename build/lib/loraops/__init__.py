"""loraops: names, S3 layout and artifact schemas shared by the stacks, functions, trainer and server.

This package is the single source of truth for everything two components must agree on. It depends on
the standard library only, so every container and Lambda can install it without pulling anything else.
"""

__version__ = "0.2.0"
