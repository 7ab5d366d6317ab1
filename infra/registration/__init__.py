"""The parts of the registration stack (``infra.stacks.registration``), one job each: the policy statements of its
functions, one function with its role, logs and alarm, the dead-letter queues, and deploy-on-approval."""
