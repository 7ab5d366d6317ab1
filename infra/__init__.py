"""CDK stacks and constructs of loraops."""
