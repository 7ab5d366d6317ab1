"""``python -m loraops.cli``: the ``loraops`` command."""

import sys

from loraops.cli import main

sys.exit(main())
