"""A deploy rehearsal without an account: an environment's stacks created in moto's CloudFormation.

``rehearse`` bootstraps the emulator as ``cdk bootstrap`` would (the version parameter, the assets bucket), publishes
the assembly's file assets there, seeds the SSM parameters the templates read, checks each template's ``Rules``
(``rules``; moto ignores them), then creates each stack in the assembly's dependency order, adapted by ``adapt``
(stand-ins for what moto does not implement, workarounds for its bugs). A stack counts as created only when the
emulator says CREATE_COMPLETE and lists every resource the adapted template has; anything else stops the rehearsal
with ``RehearsalError``.
"""

from infra.rehearsal.assembly import AssemblyError, StackArtifact, deploy_order, read_stacks
from infra.rehearsal.run import RehearsalError, Report, StackReport, rehearse

__all__ = [
    "AssemblyError",
    "RehearsalError",
    "Report",
    "StackArtifact",
    "StackReport",
    "deploy_order",
    "read_stacks",
    "rehearse",
]
