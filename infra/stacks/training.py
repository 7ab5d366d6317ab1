"""Training: the QLoRA trainer image, built from training_container/ as a CDK Docker image asset."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import aws_cdk as cdk
from constructs import Construct

from infra.image_build import REPO_ROOT, TRAINER, repository_image
from infra.parts.outputs import published_output
from infra.props import EnvironmentBasics
from loraops.images import image_uri


def trainer_image_parameter(prefix: str) -> str:
    """SSM parameter holding the trainer image URI of an environment."""
    return f"/{prefix}/trainer-image-uri"


def source_commit() -> str:
    """The checkout's commit, recorded in every manifest the image writes (``unknown`` outside a git checkout)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def training_base_image(region: str) -> str:
    """The AWS Hugging Face training image of ``region`` (family: ``infra.images.TRAINING_IMAGE``)."""
    return image_uri("training", region)


@dataclass(frozen=True, kw_only=True)
class TrainingProps(EnvironmentBasics):
    """The trainer image is built for ``region``'s training base image and published under ``prefix``."""


class TrainingStack(cdk.Stack):
    """The trainer image asset, published under an SSM parameter; `cdk deploy` builds and pushes the image
    (synth only stages the build context)."""

    def __init__(self, scope: Construct, construct_id: str, *, props: TrainingProps, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.image = repository_image(
            self,
            "TrainerImage",
            TRAINER,
            training_base_image(props.region),
            LORAOPS_GIT_SHA=source_commit(),
        )
        # Where the fine-tune workflow and Studio users find the image to start training jobs with.
        self.image_parameter = published_output(
            self,
            "TrainerImageUriParameter",
            "TrainerImageUri",
            parameter_name=trainer_image_parameter(props.prefix),
            value=self.image.image_uri,
            description="loraops QLoRA trainer image (built from training_container/ by cdk deploy)",
        )
