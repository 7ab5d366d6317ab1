"""GPU kernels of the serving path (Triton, imported only where CUDA and Triton are present)."""

from loraops_serving.ops.bgmv import add_lora_bgmv, triton_available

__all__ = ["add_lora_bgmv", "triton_available"]
