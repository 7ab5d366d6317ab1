#!/usr/bin/env python3
"""SageMaker training entry point (also runs locally and under torchrun).

    python train.py --base_model_dir BASE --train_path data.jsonl --model_dir OUT [--output_mode both ...]

In a SageMaker job the channels (``base``, ``training``, ``validation``), ``SM_MODEL_DIR`` and
``/opt/ml/input/config/hyperparameters.json`` supply the same settings.
"""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the shared loraops package, in a checkout

from loraops_trainer.config import ConfigError, load_config  # noqa: E402
from loraops.manifest import ManifestError  # noqa: E402
from loraops_trainer.data import DataError  # noqa: E402

#: SageMaker shows this file's text as the job's FailureReason.
FAILURE_FILE = Path("/opt/ml/output/failure")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(argv)
        from loraops_trainer.run import train

        metrics = train(config)
    except (ConfigError, DataError, ManifestError) as error:
        print(f"train: error: {error}", file=sys.stderr)
        if FAILURE_FILE.parent.is_dir():
            FAILURE_FILE.write_text(str(error)[:1024])
        return 2
    print(json.dumps({"metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
