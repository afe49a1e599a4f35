"""Published per-chip specs of the accelerators launch/plan.py compiles for, and the roofline they imply.

Sources (dense bfloat16 peaks; NVIDIA's datasheets also list "with sparsity", twice these):
  TPU v4   32 GiB HBM2, 275 TFLOP/s, 1200 GB/s     cloud.google.com/tpu/docs/v4
  TPU v5e  16 GiB HBM2, 197 TFLOP/s,  819 GB/s     cloud.google.com/tpu/docs/v5e
  TPU v5p  95 GiB HBM2e, 459 TFLOP/s, 2765 GB/s    cloud.google.com/tpu/docs/v5p
  TPU v6e  32 GiB HBM, 918 TFLOP/s, 1640 GB/s      cloud.google.com/tpu/docs/v6e
  A100 SXM4 40GB / 80GB: 312 TFLOP/s, 1555 / 2039 GB/s, 108 SMs, 1.41 GHz boost, 40 MB L2
      (NVIDIA A100 datasheet; Ampere GA100 whitepaper: 164 KB shared memory per SM, 163 KB per block)
  H100 SXM5 80GB: 989 TFLOP/s, 3.35 TB/s, 132 SMs, 1.98 GHz boost, 50 MB L2, 228 KB shared memory per SM
      (NVIDIA H100 datasheet, Hopper whitepaper)
  H200 SXM 141GB: the H100's compute, 4.8 TB/s (NVIDIA H200 datasheet); "141 GB" is what the driver
      reports as about 140 GiB, the figure used here.
  Device kinds that are no planning target, for their peaks only: H100 PCIe 756 TFLOP/s (1,513 sparse),
      H100 NVL and H200 NVL 835 (1,671 sparse) (NVIDIA H100 / H200 datasheets).
A large bf16 matmul reaches about 790 TFLOP/s on an H200 (80% of its datasheet peak), the practical
ceiling of any step.
A TPU v5p / v4 chip is one JAX device (megacore: its two TensorCores act as one), so TPU "v5p-32" is 16
chips; v5e / v6e slice names count chips.
"""
import dataclasses
from typing import Optional

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    family: str  # "tpu" or "gpu"
    hbm_gib: float
    peak_bf16_tflops: float
    hbm_gb_per_s: float
    device_kinds: tuple  # jax Device.device_kind spellings of this chip (benchmarks match on them)
    # TPU: topology prefix and chip config for jax.experimental.topologies; 3 dims for v4 / v5p tori.
    tpu_prefix: str = ""
    tpu_chip_config: str = "default"
    tpu_dims: int = 2
    # GPU: what XLA's GpuTargetConfig needs of the device (deviceless compile).
    sm_count: int = 0
    compute_capability: tuple = (0, 0)
    clock_ghz: float = 0.0
    l2_bytes: int = 0
    shared_memory_per_sm: int = 0
    shared_memory_per_block_optin: int = 0
    fpus_per_sm: int = 0
    description: str = ""


_A100 = dict(family="gpu", peak_bf16_tflops=312.0, sm_count=108, compute_capability=(8, 0), clock_ghz=1.41,
             l2_bytes=40 * 1024 ** 2, shared_memory_per_sm=164 * 1024, shared_memory_per_block_optin=163 * 1024,
             fpus_per_sm=64)
_HOPPER = dict(family="gpu", peak_bf16_tflops=989.0, sm_count=132, compute_capability=(9, 0), clock_ghz=1.98,
               l2_bytes=50 * 1024 ** 2, shared_memory_per_sm=228 * 1024, shared_memory_per_block_optin=227 * 1024,
               fpus_per_sm=128)

CHIPS = {
    "tpu-v4": Chip("tpu", 32.0, 275.0, 1200.0, ("TPU v4",), "v4", "megacore", 3),
    "tpu-v5e": Chip("tpu", 16.0, 197.0, 819.0, ("TPU v5 lite", "TPU v5e"), "v5e", "default", 2),
    "tpu-v5p": Chip("tpu", 95.0, 459.0, 2765.0, ("TPU v5p", "TPU v5"), "v5", "megacore", 3),
    "tpu-v6e": Chip("tpu", 32.0, 918.0, 1640.0, ("TPU v6 lite", "TPU v6e"), "v6e", "default", 2),
    "a100-40gb": Chip(hbm_gib=40.0, hbm_gb_per_s=1555.0, device_kinds=("A100-SXM4-40GB", "A100-PCIE-40GB"),
                      description="NVIDIA A100-SXM4-40GB", **_A100),
    "a100-80gb": Chip(hbm_gib=80.0, hbm_gb_per_s=2039.0, device_kinds=("A100",), description="NVIDIA A100-SXM4-80GB",
                      **_A100),
    "h100": Chip(hbm_gib=80.0, hbm_gb_per_s=3350.0, device_kinds=("H100",), description="NVIDIA H100 80GB HBM3",
                 **_HOPPER),
    "h200": Chip(hbm_gib=140.0, hbm_gb_per_s=4800.0, device_kinds=("H200",), description="NVIDIA H200", **_HOPPER),
}
TARGETS = ("cpu", *CHIPS)
# Dense bf16 peaks (TFLOP/s) of device kinds that no target above compiles for (module docstring).
OTHER_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0}


def chip(target: str) -> Chip:
    if target not in CHIPS:
        raise ValueError(f"--target={target!r} is not one of {', '.join(TARGETS)}")
    return CHIPS[target]


def _most_specific(device_kind: str, spellings):
    """The value of the longest (spelling, value) whose spelling the device_kind contains, or None."""
    kind = device_kind.lower()
    matches = [(spelling, value) for spelling, value in spellings if spelling.lower() in kind]
    return max(matches, key=lambda m: len(m[0]))[1] if matches else None


def for_device_kind(device_kind: str) -> Optional[Chip]:
    """The chip a jax device_kind names (the most specific spelling wins), or None (CPU, unknown)."""
    return _most_specific(device_kind, [(k, c) for c in CHIPS.values() for k in c.device_kinds])


def peak_tflops(device_kind: str) -> Optional[float]:
    """The datasheet dense bf16 peak of a jax device_kind (the most specific spelling wins), or None for a
    chip in no table (CPU): what benchmarks divide achieved FLOP/s by for the model FLOPs utilisation."""
    peaks = [(k, c.peak_bf16_tflops) for c in CHIPS.values() for k in c.device_kinds]
    return _most_specific(device_kind, [*peaks, *OTHER_PEAK_BF16_TFLOPS.items()])


def roofline(chip_: Chip, flops_per_device: float, bytes_per_device: Optional[float],
             model_flops_per_device: float) -> dict:
    """Lower bound on step time at the published peaks, max(FLOPs / peak, bytes / bandwidth), and the
    model-FLOPs utilisation that bound allows (model FLOPs exclude rematerialisation)."""
    compute_s = flops_per_device / (chip_.peak_bf16_tflops * 1e12)
    memory_s = None if bytes_per_device is None else bytes_per_device / (chip_.hbm_gb_per_s * 1e9)
    step_s = max(compute_s, memory_s or 0.0)
    return {"compute_s": compute_s, "memory_s": memory_s, "step_s_lower_bound": step_s,
            "bound_by": "memory" if memory_s is not None and memory_s > compute_s else "compute",
            "mfu_upper_bound": (model_flops_per_device / (chip_.peak_bf16_tflops * 1e12) / step_s) if step_s else None}
