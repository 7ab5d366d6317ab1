"""The naming module and S3 layout: the names every component must agree on."""

import pytest

from loraops import naming, s3_layout
from loraops.naming import NamingError, OutputMode

MODEL = "meta-llama/Llama-2-7b-hf"


def test_group_names():
    assert naming.base_group_name(MODEL) == "meta-llama--Llama-2-7b-hf"
    assert naming.merged_group_name(MODEL, "databricks-dolly-15k") == "meta-llama--Llama-2-7b-hf-databricks-dolly-15k"
    assert naming.adapter_group_name(MODEL, "summarize") == "meta-llama--Llama-2-7b-hf-finetuned-summarize"


def test_characters_outside_sagemakers_alphabet_become_hyphens():
    assert naming.base_group_name("Qwen/Qwen2.5-7B_v1") == "Qwen--Qwen2-5-7B-v1"


@pytest.mark.parametrize("bad", ["llama", "a/b/c", "/model", "org/", ""])
def test_bad_model_ids(bad):
    with pytest.raises(NamingError, match="must look like '<org>/<model>'"):
        naming.base_group_name(bad)


def test_too_long_and_bad_slugs():
    with pytest.raises(NamingError, match="has 70 characters"):
        naming.adapter_group_name(MODEL, "x" * 34)
    with pytest.raises(NamingError, match="lowercase letters, digits and single hyphens"):
        naming.merged_group_name(MODEL, "Dolly_15k")


def test_tags():
    assert naming.base_group_tags() == {"modelType": "BaseModel", "fineTuned": "False"}
    tags = naming.finetuned_group_tags(MODEL, OutputMode.ADAPTER, "databricks-dolly-15k")
    assert tags["modelType"] == "LoRAAdapter" and tags["fineTuned"] == "True"
    assert tags["sourceDataset"] == "databricks-dolly-15k"
    assert tags["loraops:baseModelGroup"] == "meta-llama--Llama-2-7b-hf"


def test_s3_layout():
    digest = "sha256:" + "ab" * 32  # what the manifest and folder_weights_digest write
    assert s3_layout.base_model_prefix("meta-llama--Llama-2-7b-hf", digest) == (
        f"base/meta-llama--Llama-2-7b-hf/{'ab' * 32}/"
    )
    assert s3_layout.dataset_prefix("databricks-dolly-15k", digest) == f"datasets/databricks-dolly-15k/{'ab' * 32}/"
    with pytest.raises(ValueError, match="not of the form sha256:<64 hex digits>"):
        s3_layout.base_model_prefix("g", "sha256-ab12")
    assert s3_layout.model_prefix(OutputMode.ADAPTER, "g", "job-1") == "adapters/g/job-1/output/model/"
    assert s3_layout.model_prefix(OutputMode.MERGED, "g", "job-1") == "merged/g/job-1/output/model/"
    assert s3_layout.checkpoint_prefix("job-1") == "checkpoints/job-1/"
    assert s3_layout.s3_uri("b", "base/x/") == "s3://b/base/x/"
    for prefix in (*s3_layout.READ_ONLY_PREFIXES, *s3_layout.READ_WRITE_PREFIXES):
        assert prefix.endswith("/")


@pytest.mark.parametrize("bad", ["..", "a/b", "", "-x", "a b"])
def test_s3_layout_rejects_bad_segments(bad):
    with pytest.raises(ValueError, match="not a valid S3 key segment"):
        s3_layout.checkpoint_prefix(bad)
