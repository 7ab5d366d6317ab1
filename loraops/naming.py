"""Model package group names, registry tags and package metadata keys: the registry's vocabulary.

SageMaker model package group names must match ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$``: at most 63
characters, alphanumerics separated by hyphens. Hugging Face ids (``org/model``) are mapped onto that
alphabet deterministically: ``/`` becomes ``--`` and any other character outside it becomes ``-``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

MAX_GROUP_NAME_LENGTH = 63
_GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

TAG_MODEL_TYPE = "modelType"
TAG_FINE_TUNED = "fineTuned"
TAG_SOURCE_DATASET = "sourceDataset"
TAG_BASE_GROUP = "loraops:baseModelGroup"
TAG_OUTPUT_MODE = "loraops:outputMode"
#: On a training job: the model package group its output is registered in.
TAG_PACKAGE_GROUP = "loraops:modelPackageGroup"
#: ``auto`` or ``manual``: whether new packages in the group are approved on registration.
TAG_APPROVAL_POLICY = "loraops:approvalPolicy"
#: The approval policies: a group's ``loraops:approvalPolicy`` tag and an environment's ``approval`` take these values.
AUTO_APPROVAL, MANUAL_APPROVAL = "auto", "manual"
APPROVAL_POLICIES = (AUTO_APPROVAL, MANUAL_APPROVAL)
#: The type of a field that takes an approval policy (``Literal[("a", "b")]`` is ``Literal["a", "b"]``).
ApprovalPolicy = Literal[APPROVAL_POLICIES]
#: The promote function's short name: an environment deploys it, and its role, as ``<prefix>-promote``.
PROMOTE_FUNCTION = "promote"
#: On every resource the stacks create (groups, the bucket): the environment's name.
TAG_ENVIRONMENT = "loraops:environment"


class Metadata:
    """Keys of a model package's ``CustomerMetadataProperties``: its lineage, as registration records it."""

    MODEL_ID = "modelId"
    #: The digest of every file a version serves (:func:`loraops.manifest.content_digest`): a version's identity.
    CONTENT_DIGEST = "contentDigest"
    WEIGHTS_DIGEST = "weightsDigest"
    LICENCE = "licence"
    BASE_PACKAGE_ARN = "baseModelPackageArn"
    BASE_CONTENT_DIGEST = "baseContentDigest"
    BASE_WEIGHTS_DIGEST = "baseWeightsDigest"
    DATASET_NAME = "datasetName"
    DATASET_DIGEST = "datasetDigest"
    TRAINING_JOB = "trainingJob"
    #: A fine-tune's :class:`OutputMode` value; absent on a base version.
    OUTPUT_MODE = "outputMode"
    CODE_VERSION = "codeVersion"
    IMAGE = "image"
    MANIFEST = "manifest"
    EVAL_LOSS = "evalLoss"
    #: An adapter's archive (``adapter.tar.gz``) in its version's prefix, and the archive's digest.
    ADAPTER_ARCHIVE = "adapterArchive"
    ARCHIVE_DIGEST = "archiveDigest"
    #: Prefix of the hyperparameters copied from the manifest (``hp.lora_r``, ...).
    HYPERPARAMETER_PREFIX = "hp."
    #: A promoted copy's source package and environment.
    SOURCE_PACKAGE_ARN = "sourcePackageArn"
    SOURCE_ENVIRONMENT = "sourceEnvironment"


class NamingError(ValueError):
    """A model id, dataset or task cannot be turned into a valid registry name."""


class OutputMode(StrEnum):
    """How a fine-tune is kept: folded into the base, or as a separate adapter."""

    MERGED = "merged"
    ADAPTER = "adapter"


#: A training run that writes both an adapter and the merged model (the trainer's ``output_mode=both``).
BOTH = "both"
#: What the trainer's ``output_mode`` hyperparameter accepts: an output mode, or both.
TRAINING_OUTPUTS = (OutputMode.ADAPTER.value, OutputMode.MERGED.value, BOTH)


class ModelType(StrEnum):
    """Value of the ``modelType`` tag on a model package group."""

    BASE = "BaseModel"
    MERGED = "MergedFineTunedModel"
    ADAPTER = "LoRAAdapter"


def _checked_group_name(name: str, source: str) -> str:
    if len(name) > MAX_GROUP_NAME_LENGTH:
        raise NamingError(
            f"model package group name {name!r} (from {source}) has {len(name)} characters; "
            f"SageMaker allows at most {MAX_GROUP_NAME_LENGTH}"
        )
    if not _GROUP_NAME.match(name):
        raise NamingError(f"model package group name {name!r} (from {source}) is not valid for SageMaker")
    return name


def check_slug(value: str, what: str) -> str:
    """Return ``value`` if it is a lowercase hyphenated slug (``databricks-dolly-15k``), else raise."""
    if not _SLUG.match(value):
        raise NamingError(f"{what} {value!r} must be lowercase letters, digits and single hyphens")
    return value


def base_group_name(model_id: str) -> str:
    """``meta-llama/Llama-2-7b-hf`` -> ``meta-llama--Llama-2-7b-hf``."""
    if not _HF_MODEL_ID.match(model_id):
        raise NamingError(f"base model id {model_id!r} must look like '<org>/<model>'")
    org, model = model_id.split("/")
    clean = lambda part: re.sub(r"[^A-Za-z0-9-]", "-", part)  # noqa: E731
    return _checked_group_name(f"{clean(org)}--{clean(model)}", f"model id {model_id!r}")


def merged_group_name(model_id: str, dataset: str) -> str:
    """Group for merged fine-tunes of ``model_id`` on ``dataset``: ``<base>-<dataset>``."""
    base = base_group_name(model_id)
    return _checked_group_name(f"{base}-{check_slug(dataset, 'dataset')}", f"dataset {dataset!r}")


def adapter_group_name(model_id: str, task: str) -> str:
    """Group for LoRA adapters of ``model_id`` for ``task``: ``<base>-finetuned-<task>``."""
    base = base_group_name(model_id)
    return _checked_group_name(f"{base}-finetuned-{check_slug(task, 'task')}", f"task {task!r}")


def base_group_tags() -> dict[str, str]:
    """Tags of the base model's package group."""
    return {TAG_MODEL_TYPE: ModelType.BASE.value, TAG_FINE_TUNED: "False"}


def finetuned_group_tags(model_id: str, mode: OutputMode, dataset: str) -> dict[str, str]:
    """Tags of a fine-tuned line's package group."""
    model_type = ModelType.MERGED if mode is OutputMode.MERGED else ModelType.ADAPTER
    return {
        TAG_MODEL_TYPE: model_type.value,
        TAG_FINE_TUNED: "True",
        TAG_SOURCE_DATASET: check_slug(dataset, "dataset"),
        TAG_BASE_GROUP: base_group_name(model_id),
        TAG_OUTPUT_MODE: mode.value,
    }


#: An environment's name: 1-16 lowercase letters and digits, starting with a letter (it is part of resource names).
ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")


def resource_prefix(environment: str) -> str:
    """The prefix of an environment's stack and resource names: ``loraops-<env>``."""
    return f"loraops-{environment}"
