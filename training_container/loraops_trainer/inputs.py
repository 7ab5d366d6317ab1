"""What a run reads before it trains: its inputs checked (before any model loads), the tokenizer, and the data read,
filtered, split and tokenized."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.manifest import folder_weights_digest
from loraops_trainer import data as data_lib
from loraops_trainer.model import check_target_modules
from loraops_trainer.publish import check_model_dir
from loraops_trainer.settings import TrainConfig


def check_inputs(config: TrainConfig) -> str:
    """Everything about the inputs that can fail, before a model loads; returns the base weights digest."""
    base_dir = Path(config.base_model_dir)
    if not (base_dir / "config.json").is_file():
        raise data_lib.DataError(f"{base_dir}: not a Hugging Face model folder (no config.json)")
    base_digest = folder_weights_digest(base_dir)  # fails early on a folder without weights
    check_target_modules(config)
    check_model_dir(Path(config.model_dir))
    return base_digest


@dataclass
class PreparedData:
    """A run's data: the tokenized channels, the validation records (for sample generations), the dataset digest."""

    train: data_lib.Channel
    validation: data_lib.Channel | None
    validation_records: list[data_lib.Record]
    digest: str

    def summary(self) -> dict[str, dict[str, Any]]:
        channels = [self.train] + ([self.validation] if self.validation else [])
        return {channel.name: channel.summary() for channel in channels}


def prepare_data(config: TrainConfig, tokenizer: Any, seed: int) -> PreparedData:
    """Read, filter, split and tokenize; every problem raises ``DataError`` (naming the file) before training."""
    train_path = Path(config.train_path)
    records = data_lib.filter_categories(data_lib.read_records(train_path), config.category_filter)
    validation_source = str(train_path)
    if config.validation_path:
        validation_source = config.validation_path
        validation = data_lib.filter_categories(
            data_lib.read_records(Path(config.validation_path)), config.category_filter
        )
        train = records
        digest = data_lib.dataset_digest(train_path, Path(config.validation_path))
    else:
        train, validation = data_lib.split(records, config.validation_fraction, seed)
        digest = data_lib.dataset_digest(train_path)

    def channel(records: list[data_lib.Record], name: str, source: str) -> data_lib.Channel:
        return data_lib.tokenize(
            records,
            tokenizer,
            config.max_seq_length,
            name=name,
            source=source,
            max_dropped_fraction=config.max_dropped_fraction,
        )

    return PreparedData(
        train=channel(train, "training", str(train_path)),
        validation=channel(validation, "validation", validation_source) if validation else None,
        validation_records=validation,
        digest=digest,
    )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise data_lib.DataError(f"{path}: the tokenizer has no EOS token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer
