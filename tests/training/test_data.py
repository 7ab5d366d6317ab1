"""Dolly data: prompt template, response-only labels, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from loraops_trainer import data
from loraops_trainer.data import IGNORE_INDEX, DataError
from tests.helpers import DOLLY


def test_reads_the_dolly_sample():
    records = data.read_records(DOLLY)
    assert len(records) == 577
    assert {r.category for r in records} >= {"open_qa", "closed_qa", "brainstorming"}
    with_context = next(r for r in records if "### Context:" in r.prompt)
    assert with_context.prompt.startswith("### Instruction:\n") and with_context.prompt.endswith("### Response:\n")


def test_loss_only_on_response_tokens(tokenizer):
    record = data.parse_record({"instruction": "Name a colour.", "context": "", "response": "Blue."}, "x:1")
    (sample,) = data.tokenize([record], tokenizer, max_seq_length=256).samples
    prompt_len = len([tokenizer.bos_token_id] + tokenizer(record.prompt, add_special_tokens=False)["input_ids"])
    assert sample.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    scored = [t for t in sample.labels if t != IGNORE_INDEX]
    assert scored[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(scored, skip_special_tokens=True) == "Blue."
    assert sample.input_ids[prompt_len:] == scored


def test_text_column_is_scored_entirely(tokenizer):
    record = data.parse_record({"text": "plain pretraining text"}, "x:1")
    (sample,) = data.tokenize([record], tokenizer, max_seq_length=256).samples
    assert sample.labels[0] == IGNORE_INDEX  # BOS only
    assert all(t != IGNORE_INDEX for t in sample.labels[1:])


def test_long_records_are_truncated_and_oversized_prompts_dropped(tokenizer):
    records = data.read_records(DOLLY)
    channel = data.tokenize(records, tokenizer, max_seq_length=64, source=str(DOLLY))
    assert all(len(s) <= 64 for s in channel.samples)
    assert len(channel.samples) + channel.dropped_too_long == len(records) == channel.records_read
    assert channel.dropped_too_long > 0 and channel.truncated > 0
    assert channel.summary() == {
        "source": DOLLY.name,
        "records_read": 577,
        "samples": len(channel.samples),
        "dropped": {"prompt_longer_than_max_seq_length": channel.dropped_too_long},
        "truncated_to_max_seq_length": channel.truncated,
    }


def test_too_many_dropped_records_fail_naming_the_channel(tokenizer):
    """A max_seq_length that silently drops a large share of the data is refused, unless allowed."""
    records = data.read_records(DOLLY)
    dropped = data.tokenize(records, tokenizer, max_seq_length=64).dropped_too_long
    share = dropped / len(records)
    with pytest.raises(
        DataError,
        match=rf"training data {DOLLY}: {dropped} of 577 records \({share:.0%}\) have a "
        r"prompt longer than max_seq_length=64, more than max_dropped_fraction=0.05",
    ):
        data.tokenize(records, tokenizer, max_seq_length=64, source=str(DOLLY), max_dropped_fraction=0.05)
    assert data.tokenize(records, tokenizer, max_seq_length=64, max_dropped_fraction=share).dropped_too_long == dropped


def _write(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"instruction": "a", "response": "b"}', "{not json"], r"train\.jsonl:2: not valid JSON"),
        (['{"instruction": "a"}'], r"train\.jsonl:1: missing field 'response'"),
        (['{"instruction": "a", "response": 3}'], r"train\.jsonl:1: field 'response' must be a string, got int"),
        (['{"instruction": " ", "response": "b"}'], r"train\.jsonl:1: field 'instruction' is empty"),
        (['["a", "b"]'], r"train\.jsonl:1: expected a JSON object, got list"),
        ([""], r"train\.jsonl: no records"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        data.read_records(_write(tmp_path, lines))


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        data.read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"no \.jsonl or \.json files"):
        data.read_records(tmp_path)


def test_category_filter(tmp_path):
    records = data.read_records(DOLLY)
    kept = data.filter_categories(records, ["summarization"])
    assert len(kept) == 46 and {r.category for r in kept} == {"summarization"}
    with pytest.raises(DataError, match=r"no records in categories \['poetry'\]; the data has \['brainstorming'"):
        data.filter_categories(records, ["poetry"])


def test_split_is_deterministic_and_disjoint():
    records = data.read_records(DOLLY)
    train, val = data.split(records, 0.1, seed=3)
    again = data.split(records, 0.1, seed=3)
    assert (train, val) == again
    assert len(val) == 58 and len(train) + len(val) == 577
    assert not {r.source for r in train} & {r.source for r in val}


def test_dataset_digest_changes_with_content(tmp_path):
    path = _write(tmp_path, [json.dumps({"instruction": "a", "response": "b"})])
    first = data.dataset_digest(path)
    path.write_text(path.read_text() + json.dumps({"instruction": "c", "response": "d"}) + "\n")
    assert data.dataset_digest(path) != first and first.startswith("sha256:")


def test_validation_channel_is_used_instead_of_a_split(tmp_path, tokenizer):
    from loraops_trainer.inputs import prepare_data
    from loraops_trainer.settings import TrainConfig

    validation = tmp_path / "validation.jsonl"
    validation.write_text("\n".join(DOLLY.read_text().splitlines()[:5]) + "\n")
    config = TrainConfig(train_path=str(DOLLY), validation_path=str(validation), max_seq_length=2048)
    prepared = prepare_data(config, tokenizer, seed=42)
    assert len(prepared.validation_records) == 5
    assert len(prepared.train.samples) == len(data.tokenize(data.read_records(DOLLY), tokenizer, 2048).samples)
    assert prepared.digest == data.dataset_digest(DOLLY, validation)
    assert prepared.digest != data.dataset_digest(validation, DOLLY) != data.dataset_digest(DOLLY)
    assert prepared.summary()["validation"]["records_read"] == 5
