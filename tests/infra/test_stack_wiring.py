"""Template assertions on how the stacks fit together: environment tags on every stack, the trainer image staged and
its URI published, no template without resources, make deploy's order, retained named resources adopted or checked
on redeploy; for every environment (the session's one synth, nag gate included)."""

from __future__ import annotations

import pytest

from tests.infra.conftest import CONCERNS, ENVIRONMENTS

pytestmark = pytest.mark.parametrize("env", ENVIRONMENTS)


def test_environment_tags_on_every_stack(env, synthesized):
    for stack in synthesized[env].stacks:
        assert stack.tags.tag_values()["loraops:environment"] == env
        assert stack.tags.tag_values()["project"] == "loraops"


def test_training_image_asset_is_staged_from_the_trainer(env, synthesized):
    import json
    import subprocess
    from pathlib import Path

    from infra.image_build import TRAINER
    from infra.images import TRAINING_IMAGE
    from infra.stacks.training import training_base_image
    from tests.helpers import ROOT

    stack = synthesized[env].training
    assembly = stack.node.root.synth()  # already synthesized once: returns the same cloud assembly
    artifact = assembly.get_stack_artifact(stack.artifact_id)
    assets = json.loads(Path(assembly.directory, f"{stack.artifact_id}.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "training_container/Dockerfile"
    assert source["dockerBuildArgs"]["BASE_IMAGE"] == training_base_image(synthesized[env].config.region)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert source["dockerBuildArgs"]["LORAOPS_GIT_SHA"] == commit  # every manifest the image writes names it
    staged = Path(assembly.directory, source["directory"])
    top = sorted(p.name for p in staged.iterdir())
    assert top == sorted({Path(source).parts[0] for source in TRAINER.sources}), top  # infra/image_build.py
    dockerfile = (staged / "training_container" / "Dockerfile").read_text()
    # one constant (infra.images.TRAINING_IMAGE) names the base; the Dockerfile only receives it
    assert (
        "ARG BASE_IMAGE\n" in dockerfile and "dkr.ecr" not in dockerfile and TRAINING_IMAGE.framework not in dockerfile
    )
    assert (staged / "training_container" / "Dockerfile").is_file()
    assert (staged / "training_container" / "loraops_trainer" / "run.py").is_file()
    assert not list(staged.rglob("__pycache__"))
    assert artifact.stack_name == f"loraops-{env}-training"


def test_every_template_has_resources(env, templates):
    """CloudFormation rejects a template without resources ('At least one Resources member must be defined')."""
    for concern in CONCERNS:
        assert templates[(env, concern)].to_json().get("Resources"), concern


def test_trainer_image_uri_is_published(env, templates):
    templates[(env, "training")].has_resource_properties(
        "AWS::SSM::Parameter", {"Name": f"/loraops-{env}/trainer-image-uri", "Type": "String"}
    )


def test_stacks_deploy_after_every_stack_they_name(env, synthesized):
    """Every dependency (references and the explicit ones for literal names) comes earlier in make deploy's order, and
    the stacks that name the execution role (studio's) literally depend on studio."""
    from infra.deploy import DEPLOY_ORDER

    stacks = synthesized[env]
    position = {concern: DEPLOY_ORDER.index(concern) for concern in CONCERNS}
    for concern in CONCERNS:
        for dependency in getattr(stacks, concern).dependencies:
            before = dependency.stack_name.removeprefix(f"{stacks.config.prefix}-")
            assert position[before] < position[concern], f"{concern} deploys before {before}, which it depends on"

    def depends(concern: str) -> set[str]:
        return {d.stack_name.removeprefix(f"{stacks.config.prefix}-") for d in getattr(stacks, concern).dependencies}

    assert {"studio", "network", "storage"} <= depends("serving")
    assert {"studio", "training", "network", "storage"} <= depends("workflow")
    assert {"studio", "registry"} <= depends("registration")


#: Types whose retained, statically named resources CloudFormation's auto-import (``--import-existing-resources``)
#: adopts on a redeploy: their primary identifier is the name in the template.
ADOPTABLE = {
    "AWS::S3::Bucket": "BucketName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::ResourceGroups::Group": "Name",
}


def test_retained_named_resources_are_adopted_or_checked_on_redeploy(env, synthesized, templates):
    """A destroyed ``retain`` environment leaves these behind; make deploy adopts each (or, for package groups, whose
    identifier is their read-only ARN, the preflight names each one left outside a stack)."""
    from infra import deploy

    config = synthesized[env].config
    for concern in CONCERNS:
        for logical, resource in templates[(env, concern)].to_json()["Resources"].items():
            if resource.get("DeletionPolicy") not in ("Retain", "RetainExceptOnCreate"):
                continue
            kind, properties = resource["Type"], resource.get("Properties", {})
            if kind == "AWS::SageMaker::ModelPackageGroup":
                assert properties["ModelPackageGroupName"] in config.package_groups
            elif kind in ADOPTABLE:
                name = properties.get(ADOPTABLE[kind])
                assert name is None or isinstance(name, str), f"{logical}: auto-import needs a literal name"
            else:
                assert not any(k.endswith("Name") for k in properties), f"{logical} ({kind}): named, retained"
    adopt = "--import-existing-resources" in deploy.deploy_command(config, deploy.StackPlan([]))
    assert adopt == (config.removal_policy == "retain")
