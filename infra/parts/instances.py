"""What a SageMaker instance type has, where a stack's resources depend on it."""

from __future__ import annotations

#: Instance families with local NVMe instance storage: SageMaker refuses a volume KMS key on them.
NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "inf2", "trn1")


def has_local_nvme(instance_type: str) -> bool:
    """Whether ``instance_type`` (``ml.<family>.<size>``) has local NVMe storage (no volume KMS key then)."""
    family = instance_type.split(".")[1]
    return family in NVME_FAMILIES or family.endswith("d")
