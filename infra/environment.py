"""The stacks of one environment, created side by side at the app's top level.

They are plain top-level stacks named ``loraops-<env>-<concern>`` rather than a ``cdk.Stage``: the CDK
CLI only reports validation (cdk-nag) findings for the stacks it selects, and a bare ``cdk synth``
selects none inside a Stage, so a Stage would let findings through the gate unseen.
"""

from __future__ import annotations

import aws_cdk as cdk

from infra.config import EnvironmentConfig
from infra.stacks.network import NetworkStack
from infra.stacks.registry import RegistryStack
from infra.stacks.storage import StorageStack
from infra.stacks.studio import StudioStack
from infra.stacks.training import TrainingStack

ENVIRONMENT_TAG = "loraops:environment"


class EnvironmentStacks:
    """All stacks of one environment: storage, network, studio, registry, training."""

    def __init__(self, app: cdk.App, config: EnvironmentConfig) -> None:
        self.config = config
        env = cdk.Environment(account=config.account, region=config.region)

        def name(concern: str) -> str:
            return f"{config.prefix}-{concern}"

        self.storage = StorageStack(app, name("storage"), config=config, env=env)
        self.network = NetworkStack(app, name("network"), config=config, env=env)
        self.studio = StudioStack(
            app,
            name("studio"),
            config=config,
            env=env,
            key=self.storage.key,
            vpc=self.network.vpc,
            subnets=self.network.subnets.subnets,
            security_group=self.network.workload_security_group,
        )
        self.registry = RegistryStack(app, name("registry"), config=config, env=env)
        self.training = TrainingStack(app, name("training"), config=config, env=env)

        for stack in self.stacks:
            cdk.Tags.of(stack).add(ENVIRONMENT_TAG, config.name)
            for key, value in config.tags.items():
                cdk.Tags.of(stack).add(key, value)

    @property
    def stacks(self) -> list[cdk.Stack]:
        return [self.storage, self.network, self.studio, self.registry, self.training]
