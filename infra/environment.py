"""The stacks of one environment, created side by side at the app's top level.

They are plain top-level stacks named ``loraops-<env>-<concern>`` rather than a ``cdk.Stage``: the CDK
CLI only reports validation (cdk-nag) findings for the stacks it selects, and a bare ``cdk synth``
selects none inside a Stage, so a Stage would let findings through the gate unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk

from infra.environment_config import EnvironmentConfig
from infra.registration.props import RegistrationProps
from infra.serving.props import ServingProps
from infra.stacks.network import NetworkProps, NetworkStack
from infra.stacks.registration import RegistrationStack
from infra.stacks.registry import RegistryProps, RegistryStack
from infra.stacks.serving import ServingStack
from infra.stacks.storage import StorageProps, StorageStack
from infra.stacks.studio import StudioProps, StudioStack
from infra.stacks.training import TrainingProps, TrainingStack
from infra.stacks.workflow import WorkflowProps, WorkflowStack
from loraops.naming import TAG_ENVIRONMENT


@dataclass(frozen=True)
class EnvironmentProps:
    """One environment's props, a field per stack (``infra.app_factory.environment_props`` builds them)."""

    network: NetworkProps
    storage: StorageProps
    studio: StudioProps
    registry: RegistryProps
    registration: RegistrationProps
    training: TrainingProps
    workflow: WorkflowProps
    serving: ServingProps | None


class EnvironmentStacks:
    """All stacks of one environment: storage, network, studio, registry, registration, training, workflow and,
    where ``serving`` is configured, serving."""

    def __init__(self, app: cdk.App, config: EnvironmentConfig, props: EnvironmentProps) -> None:
        """``config`` names the stacks and gives their account, region, tags and termination protection; ``props``
        is what each stack reads."""
        self.config, self.props = config, props
        env = cdk.Environment(account=config.account, region=config.region)

        def name(concern: str) -> str:
            return f"{config.prefix}-{concern}"

        common = dict(
            env=env,
            tags={TAG_ENVIRONMENT: config.name, **config.tags},
            termination_protection=config.termination_protection,
        )
        self.network = NetworkStack(app, name("network"), props=props.network, **common)
        self.storage = StorageStack(
            app, name("storage"), props=props.storage, s3_endpoint=self.network.s3_endpoint, **common
        )
        # What the workloads share: the artifact key and the VPC placement.
        placed = dict(key=self.storage.key, placement=self.network.placement, **common)
        self.studio = StudioStack(app, name("studio"), props=props.studio, **placed)
        self.registry = RegistryStack(app, name("registry"), props=props.registry, **common)
        self.registration = RegistrationStack(app, name("registration"), props=props.registration, **placed)
        self.training = TrainingStack(app, name("training"), props=props.training, **common)
        self.workflow = WorkflowStack(
            app, name("workflow"), props=props.workflow, trainer_image=self.training.image.image_uri, **placed
        )
        self.serving = ServingStack(app, name("serving"), props=props.serving, **placed) if props.serving else None
        # Stack tags (explicitStackTags) reach resources at deploy time; Tags.of also writes them into templates.
        for stack in self.stacks:
            for key, value in common["tags"].items():
                cdk.Tags.of(stack).add(key, value)

    @property
    def stacks(self) -> list[cdk.Stack]:
        return [
            self.storage,
            self.network,
            self.studio,
            self.registry,
            self.registration,
            self.training,
            self.workflow,
            *([self.serving] if self.serving else []),
        ]
