"""The parts of the serving stack (``infra.stacks.serving``): its props, the endpoint's capacity, and
deploy-on-approval, which changes what the endpoint serves (deployed in the registration stack; see its module)."""
