"""Devices to compile for with no chip attached: TPU slices from libtpu's topology descriptions and GPU
hosts from the CUDA PJRT plugin, given the chip's published specs (`chips`). Needs `pip install -e '.[plan]'`;
the process keeps JAX_PLATFORMS=cpu (these devices only compile, nothing runs on them).
"""
import math
import os

from xformer_jax.plan import chips

GPUS_PER_HOST = 8  # DGX / HGX A100, H100 and H200 machines
TPU_CHIPS_PER_HOST = 4  # a 2x2 tray of chips per TPU VM host
# XLA:GPU's Triton GEMM tiling aborted on a stage-2 dot (`Couldn't find output tile sizes` for a bf16
# [30840, 1280] operand of the dual block's cross-attention value projection) when compiling without a
# device (issue 16). The cause was not found, so deviceless GPU compiles set the flag and use cuBLAS GEMMs
# (buffer assignment, hence the memory plan, does not depend on the GEMM emitter; a run on real GPUs
# autotunes and may pick Triton).
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def _dims(n: int, rank: int) -> tuple:
    """The slice shape of n chips (a power of two), as Cloud TPU shapes them: 2x2, 2x4, 4x4, 4x8, ... and
    2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ... (a host's 2x2 first, then the smallest dim doubles, last first)."""
    dims = [1] * rank
    while math.prod(dims) < n:
        limit = 2 if rank == 3 and math.prod(dims) < 4 else rank
        smallest = min(dims[:limit])
        dims[max(i for i in range(limit) if dims[i] == smallest)] *= 2
    return tuple(dims)


def valid_counts(target: str) -> str:
    if target == "cpu":
        return "any positive number"
    if chips.chip(target).family == "tpu":
        return "a power of two (1, 2, 4, 8, 16, 32, 64, ...)"
    return f"1 to {GPUS_PER_HOST}, or a multiple of {GPUS_PER_HOST} (hosts of {GPUS_PER_HOST} GPUs)"


def _check_count(target: str, n: int) -> None:
    family = chips.chip(target).family
    ok = n >= 1 and ((n & (n - 1)) == 0 if family == "tpu" else n <= GPUS_PER_HOST or n % GPUS_PER_HOST == 0)
    if not ok:
        raise ValueError(f"--devices={n} is not a {target} slice: use {valid_counts(target)}")


def tpu_devices(chip: chips.Chip, n: int):
    from jax.experimental import topologies
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel plans (and tests) each load libtpu
    dims = _dims(n, chip.tpu_dims)
    per_host = tuple(min(d, 2) for d in dims[:2]) + (1,)
    topology = topologies.get_topology_desc(
        topology_name=f"{chip.tpu_prefix}:{'x'.join(map(str, dims))}", platform="tpu",
        chip_config_name=chip.tpu_chip_config, chips_per_host_bounds=per_host, num_slices=1,
        wrap=(False,) * 3)
    return topology.devices


def gpu_target_config(chip: chips.Chip) -> str:
    """XLA's GpuTargetConfig (text proto) for `chip`: what the compiler would otherwise ask the device."""
    major, minor = chip.compute_capability
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {chip.shared_memory_per_sm}
  threads_per_core_limit: 2048
  core_count: {chip.sm_count}
  fpus_per_core: {chip.fpus_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_gb_per_s * 1e9)}
  l2_cache_size: {chip.l2_bytes}
  clock_rate_ghz: {chip.clock_ghz}
  device_memory_size: {int(chip.hbm_gib * chips.GIB)}
  shared_memory_per_block_optin: {chip.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{chip.description}"
"""


def gpu_devices(chip: chips.Chip, n: int):
    from jax.experimental import topologies
    hosts, per_host = (1, n) if n <= GPUS_PER_HOST else (n // GPUS_PER_HOST, GPUS_PER_HOST)
    topology = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(chip),
                                            topology=f"1x{hosts}x{per_host}")
    return topology.devices


def devices(target: str, n: int):
    """n deviceless devices of `target` (a TPU slice or GPU hosts) to build the mesh from."""
    chip = chips.chip(target)
    _check_count(target, n)
    try:
        return (tpu_devices if chip.family == "tpu" else gpu_devices)(chip, n)
    except ImportError as e:
        raise ValueError(f"--target={target} needs the real compilers: pip install -c constraints.txt -e '.[plan]' "
                         f"({e})") from None


def compiler_options(target: str) -> dict:
    return GPU_COMPILER_OPTIONS if target != "cpu" and chips.chip(target).family == "gpu" else {}
