"""The parts of the registration stack (``infra.stacks.registration``), one job each: the policy statements of its
functions, one function with its role, logs and alarm, and the dead-letter queues (deploy-on-approval, deployed in this
stack too, is built by ``infra.serving.deploy_on_approval``)."""
