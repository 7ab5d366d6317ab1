"""Event shapes the stacks and the functions agree on."""

from __future__ import annotations

from loraops.naming import TAG_PACKAGE_GROUP

TRAINING_JOB_STATE_CHANGE = "SageMaker Training Job State Change"

#: EventBridge pattern of the registration rule: completed training jobs tagged with their package group.
TRAINING_JOB_COMPLETED = {
    "source": ["aws.sagemaker"],
    "detail-type": [TRAINING_JOB_STATE_CHANGE],
    "detail": {"TrainingJobStatus": ["Completed"], "Tags": {TAG_PACKAGE_GROUP: [{"exists": True}]}},
}

MODEL_PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"


def package_state_changed(groups: list[str]) -> dict:
    """EventBridge pattern of the deploy rule: any state change of a package in ``groups``."""
    return {
        "source": ["aws.sagemaker"],
        "detail-type": [MODEL_PACKAGE_STATE_CHANGE],
        "detail": {"ModelPackageGroupName": sorted(groups)},
    }
