#!/usr/bin/env python3
"""SageMaker training entry point (``SAGEMAKER_PROGRAM``): the installed ``loraops-train`` command.

python train.py --base_model_dir BASE --train_path data.jsonl --model_dir OUT [--output_mode both ...]
"""

import sys

from loraops_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
