"""Compile the train step for a mesh of N chips and print per-chip memory, FLOPs and the roofline step time.

  launch/plan.py --config=configs/paper.py:stage1 --devices=64 [--hbm_gib=32] [--config.KEY=VALUE ...]
  launch/plan.py --config=configs/paper.py:stage2_opt6.7b --target=a100-40gb --devices=16
  launch/plan.py --config=configs/paper.py:stage1 --target=tpu-v5p --devices=16 --config.batch_size=1664

--target: cpu (default: N fake CPU devices and XLA:CPU's estimate, no extra packages) or a real chip,
compiled by that chip's own compiler with no chip attached (`pip install -c constraints.txt -e '.[plan]'`):
tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e (libtpu's topology of an N-chip slice), a100-40gb, a100-80gb, h100,
h200 (the CUDA plugin's deviceless compiler, hosts of 8 GPUs); specs in xformer_jax/plan/chips.py.
  launch/plan.py --config=configs/paper.py:stage1 --devices=32 --config.batch_size=1664 \
      --config.mesh.data=2 --config.mesh.fsdp=16 --config.model.qformer.remat=True

No weights and no data: the state comes from `jax.eval_shape`, the batch is ShapeDtypeStructs carrying
the batch sharding, and the step is `jax.jit(...).lower(abstract...).compile()` with the same
in/out shardings and donation as `xformer_jax.train.loop.make_trainer`. The mesh is N fake CPU devices
(the script sets XLA_FLAGS=--xla_force_host_platform_device_count=N itself, before JAX starts).

The step is traced, as in training, with the mesh and config.mesh.rules in context, so the models'
activation sharding constraints apply.
The global batch must divide over data * fsdp (1680 does not over 32 or 64 devices: the error names
the nearest sizes that do). LLVM optimisation of the never-run CPU code is skipped (--fast_compile).

Prints a table and, as its last line, one JSON object. Memory comes from the target compiler's buffer
assignment (`compiled.memory_analysis()`): argument, output, alias (donated) and temp bytes per device,
and the peak argument + output - alias + temp. XLA:CPU fuses and rematerialises differently from the TPU
and GPU compilers (it overestimated a TPU's temporaries 1.7x, and ignores remat): plan on a real target.
Not in any estimate: cuBLAS / cuDNN / NCCL workspaces and the GPU allocator's reserve, hence the 10%
headroom `fits_with_headroom` asks for.

FLOPs: `flops_per_device` is the compiler's cost analysis where it has one (XLA:TPU, XLA:CPU; both count
a scanned layer once), else the matmul FLOPs counted on the step's jaxpr (`flops_source` says which).
The roofline uses the jaxpr count of the step as configured (rematerialisation included), the compiler's
bytes accessed where it reports them (TPU, CPU; XLA:GPU reports none, so its memory bound reads the
argument + output bytes once: `bytes_accessed_source`), and the MFU bound divides the model FLOPs (the
same count with remat off) by that time at the chip's peak.
"""
import os
import re
import sys


def _devices_from_argv(argv) -> int:
    """--devices=N (or --devices N) read before absl parses flags: XLA needs it before JAX starts."""
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith("--devices="):
            value = arg.split("=", 1)[1]
        elif arg == "--devices" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise SystemExit(f"--devices={value!r} must be a positive integer")
    return 8


def _force_cpu_devices(n: int) -> None:
    if n < 1:
        raise SystemExit(f"--devices={n} must be a positive integer")
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def _target_from_argv(argv) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--target="):
            return arg.split("=", 1)[1]
        if arg == "--target" and i + 1 < len(argv):
            return argv[i + 1]
    return "cpu"


if __name__ == "__main__":
    if _target_from_argv(sys.argv) == "cpu":
        _force_cpu_devices(_devices_from_argv(sys.argv))
    else:  # the TPU / GPU devices are deviceless topologies; nothing runs but on the CPU
        os.environ["JAX_PLATFORMS"] = "cpu"

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Any, Optional  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from xformer_jax import factory, partitioning, storage  # noqa: E402
from xformer_jax.configs import cli  # noqa: E402
from xformer_jax.models import xformer  # noqa: E402
from xformer_jax.plan import chips, flops as flop_count, targets  # noqa: E402
from xformer_jax.train import loop, run_length  # noqa: E402

GIB = 1024 ** 3
HEADROOM = 0.9  # plan peaks at <= 90% of HBM: workspaces and the allocator's reserve are not in the estimate
# The CPU executable is never run: skip LLVM's expensive optimisation of the generated code. HLO
# passes, buffer assignment (memory_analysis) and cost_analysis are unaffected (same figures).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass
class AbstractTrainer:
    """What `loop.make_trainer` builds, with ShapeDtypeStructs in place of arrays."""
    mesh: Any
    model: xformer.Stage1Model
    state: Any  # TrainState of ShapeDtypeStructs carrying their shardings
    batch: dict  # ShapeDtypeStructs carrying the batch sharding
    step_fn: Any  # the jitted step, same shardings and donation as make_trainer's


def check_batch(config: ml_collections.ConfigDict, mesh) -> int:
    """The global batch must split evenly over the batch shards (data * fsdp, DCN included)."""
    shards = math.prod(mesh.shape[a] for a in partitioning.BATCH_AXES)
    batch = config.batch_size
    if batch % shards:
        lower, upper = batch // shards * shards, -(-batch // shards) * shards
        raise ValueError(f"config.batch_size={batch} does not divide over the {shards} batch shards "
                         f"(mesh data * fsdp = {dict(mesh.shape)}); nearest that do: "
                         f"{lower or upper} or {upper}")
    per_shard = batch // shards
    accum = config.optim.accum_steps
    if per_shard % accum:
        raise ValueError(f"config.optim.accum_steps={accum} does not divide the per-device batch {per_shard}")
    return per_shard


def abstract_batch(config: ml_collections.ConfigDict, model_config: xformer.Stage1Config, sharding) -> dict:
    """The global batch `Trainer.global_batch` hands the step, as ShapeDtypeStructs.

    The pipeline always emits mae_pixel_values (the step ignores it for blip2), so it is always here.
    """
    b, v = config.batch_size, model_config.vision
    mae_size = model_config.mae.image_size if model_config.mae is not None else (
        config.data.mae_image_size or config.data.image_size)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    text = config.data.max_txt_len if config.stage == "stage2" else config.data.max_len
    batch = {"pixel_values": spec((b, v.num_channels, v.image_size, v.image_size), jnp.float32),
             "mae_pixel_values": spec((b, 3, mae_size, mae_size), jnp.float32),
             "input_ids": spec((b, text), jnp.int32),
             "attention_mask": spec((b, text), jnp.int32)}
    if config.stage == "stage2":
        batch["labels"] = spec((b, text), jnp.int32)
    elif config.loss.use_image_ids:
        batch["image_ids"] = spec((b,), jnp.int32)
    return batch


def abstract_trainer(config: ml_collections.ConfigDict, devices=None) -> AbstractTrainer:
    """`loop.make_trainer` without allocating anything: same mesh, shardings, state layout and step."""
    loop.validate(config)
    layout = factory.model_layout(config, devices)
    check_batch(config, layout.mesh)
    params = partitioning.unbox(jax.eval_shape(layout.init, jax.random.key(config.seed)))
    frozen_names = layout.model_config.frozen_collections
    params = jax.eval_shape(lambda p: factory.with_frozen_dtype(p, frozen_names, config.model.frozen_dtype), params)
    create, sharding, step_fn, _ = loop.state_and_step(config, layout, params)
    trainable, frozen = xformer.split_params(params, frozen_names)
    abstract_state = jax.eval_shape(create, trainable, frozen, jax.random.key(config.seed))
    mesh, model, model_config = layout.mesh, layout.model, layout.model_config
    batch_sh = partitioning.batch_sharding(mesh)
    return AbstractTrainer(mesh, model, partitioning.with_shardings(abstract_state, sharding),
                           abstract_batch(config, model_config, batch_sh), step_fn)


def _count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard per leaf)."""
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return cost or {}


REMAT_SECTIONS = ("vision", "mae", "qformer", "llm")


def _remat(config: ml_collections.ConfigDict) -> dict:
    return {k: config.model[k].get("remat", False) for k in REMAT_SECTIONS if config.model.get(k) is not None}


def without_remat(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same run with every remat off: its step's FLOPs are the model FLOPs."""
    out = config.copy_and_resolve_references()
    for k, value in _remat(out).items():
        out.model[k].remat = type(value)()  # False, or "" for a policy name (config fields keep their type)
    return out


def step_flops(config: ml_collections.ConfigDict, devices) -> float:
    trainer = abstract_trainer(config, devices)
    return flop_count.matmul_flops(trainer.step_fn, trainer.state, trainer.batch)


def plan(config: ml_collections.ConfigDict, hbm_gib: Optional[float] = None, fast_compile: bool = True,
         target: str = "cpu", devices=None) -> dict:
    """Lowers and compiles the step abstractly for `target` (devices: its deviceless devices; None for
    the simulated CPU mesh); returns the figures as a JSON-able dict."""
    chip = None if target == "cpu" else chips.chip(target)
    hbm_gib = hbm_gib or (chip.hbm_gib if chip else 32.0)
    if config.total_steps is None:  # set by the data at a run's start; the compiled step is the same for any
        config = config.copy_and_resolve_references()
        config.total_steps = run_length.total_steps(config, config.get("dataset_size") or config.batch_size)
    t0 = time.perf_counter()
    trainer = abstract_trainer(config, devices)
    t1 = time.perf_counter()
    lowered = trainer.step_fn.lower(trainer.state, trainer.batch)
    t2 = time.perf_counter()
    compiled = lowered.compile(FAST_COMPILE if target == "cpu" and fast_compile else targets.compiler_options(target))
    t3 = time.perf_counter()
    executed = flop_count.matmul_flops(trainer.step_fn, trainer.state, trainer.batch)
    model = executed if not any(_remat(config).values()) else step_flops(without_remat(config), devices)
    t4 = time.perf_counter()

    mem = compiled.memory_analysis()
    argument, output = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    peak = argument + output - alias + temp
    cost = _cost(compiled)
    n = trainer.mesh.size
    compiler_flops = cost.get("flops")
    flops = float(compiler_flops) if compiler_flops else executed / n
    bytes_accessed = cost.get("bytes accessed")
    # XLA:GPU reports none: every step reads its arguments and writes its outputs at least once.
    bytes_source = "compiler cost analysis" if bytes_accessed else "argument + output bytes (a lower bound)"
    bytes_accessed = float(bytes_accessed) if bytes_accessed else float(argument + output)
    device = trainer.mesh.devices.flat[0]
    state = trainer.state
    shards = math.prod(trainer.mesh.shape[a] for a in partitioning.BATCH_AXES)
    return {
        "devices": n,
        "mesh": {k: int(v) for k, v in trainer.mesh.shape.items()},
        "fusion": f"{config.model.fusion.kind}/{config.model.fusion.placement}",
        "batch_size": config.batch_size,
        "batch_per_device": config.batch_size // shards,
        "accum_steps": config.optim.accum_steps,
        "dtype": config.model.dtype,
        "frozen_dtype": config.model.frozen_dtype,
        "remat": _remat(config),
        "scan_layers": {k: bool(config.model[k].get("scan_layers", False)) for k in REMAT_SECTIONS
                        if config.model.get(k) is not None},
        "params_trainable": _count(state.params),
        "params_frozen": _count(state.frozen),
        "bytes_per_device": {
            "params_trainable": _device_bytes(state.params),
            "params_frozen": _device_bytes(state.frozen),
            "optimizer_state": _device_bytes(state.opt_state),
            "batch": _device_bytes(trainer.batch),
            "argument": argument,
            "output": output,
            "alias": alias,
            "temp": temp,
            "peak_estimate": peak,
        },
        "target": target,
        "hbm_gib": hbm_gib,
        "fits": peak <= hbm_gib * GIB,
        "headroom": round(1.0 - peak / (hbm_gib * GIB), 4),
        "fits_with_headroom": peak <= HEADROOM * hbm_gib * GIB,
        "flops_per_device": flops,
        "flops_total": flops * n,
        "flops_source": "compiler cost analysis" if compiler_flops else "jaxpr matmul count (remat included)",
        "jaxpr_flops_per_device": {"executed": executed / n, "model": model / n},
        "bytes_accessed_per_device": bytes_accessed,
        "bytes_accessed_source": bytes_source,
        "roofline": None if chip is None else chips.roofline(chip, executed / n, bytes_accessed, model / n),
        "seconds": {"build": round(t1 - t0, 1), "lower": round(t2 - t1, 1), "compile": round(t3 - t2, 1),
                    "flop_count": round(t4 - t3, 1)},
        "backend": (f"{device.platform} compiler for {device.device_kind} (deviceless)" if chip else
                    f"{jax.default_backend()} (simulated mesh; memory is the CPU compiler's estimate)"),
    }


def table(result: dict) -> str:
    b = result["bytes_per_device"]

    def gib(x):
        return f"{x / GIB:.2f} GiB"

    mesh = " x ".join(f"{k}={v}" for k, v in result["mesh"].items())
    rows = [
        ("devices / mesh", f"{result['devices']}  ({mesh})"),
        ("fusion", result["fusion"]),
        ("batch (global / per device)", f"{result['batch_size']} / {result['batch_per_device']}"
                                        f"  (accum_steps {result['accum_steps']})"),
        ("dtype (compute / frozen)", f"{result['dtype']} / {result['frozen_dtype']}"),
        ("remat", ", ".join(f"{k} {v}" for k, v in result["remat"].items())),
        ("params trainable / frozen",
         f"{result['params_trainable'] / 1e6:.1f}M / {result['params_frozen'] / 1e6:.1f}M"),
        ("per device: trainable params", gib(b["params_trainable"])),
        ("per device: frozen params", gib(b["params_frozen"])),
        ("per device: optimizer state", gib(b["optimizer_state"])),
        ("per device: batch", gib(b["batch"])),
        ("memory: argument", gib(b["argument"])),
        ("memory: output", gib(b["output"])),
        ("memory: alias (donated)", gib(b["alias"])),
        ("memory: temp", gib(b["temp"])),
        ("memory: peak estimate", gib(b["peak_estimate"])),
        (f"fits {result['hbm_gib']:g} GiB per chip", f"{'yes' if result['fits'] else 'NO'}"
                                                     f"  (headroom {100 * result['headroom']:.0f}%)"),
        ("FLOPs per step per device", f"{result['flops_per_device'] / 1e12:.2f} TFLOP ({result['flops_source']})"),
        ("model FLOPs per step per device", f"{result['jaxpr_flops_per_device']['model'] / 1e12:.2f} TFLOP"),
        ("FLOPs per step total", f"{result['flops_total'] / 1e15:.2f} PFLOP"),
        ("time (build / lower / compile / count)", " / ".join(f"{v:.0f} s" for v in result["seconds"].values())),
        ("backend", result["backend"]),
    ]
    if result["roofline"]:
        r = result["roofline"]
        rows.append(("roofline step time (bound by)", f"{r['step_s_lower_bound']:.3f} s ({r['bound_by']})"))
        rows.append(("MFU upper bound", f"{100 * r['mfu_upper_bound']:.0f}%"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


FLAGS = flags.FLAGS
CONFIG = cli.define_config("e.g. configs/paper.py:stage1")
flags.DEFINE_integer("devices", 8, "Number of chips (the mesh spans all of them).")
flags.DEFINE_string("target", "cpu", f"What to compile for: one of {', '.join(chips.TARGETS)}.")
flags.DEFINE_float("hbm_gib", None, "Memory per chip the peak is compared with (GiB); default: the "
                   "target chip's, 32 for cpu.")
flags.DEFINE_bool("fast_compile", True, "Skip LLVM optimisation of the (never run) CPU code; same figures, "
                  "faster compile.")
flags.DEFINE_string("out", None, "Also write the JSON object to this file (local or gs://...).")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.WARNING)
    if FLAGS.target not in chips.TARGETS:
        raise SystemExit(f"plan: --target={FLAGS.target!r} is not one of {', '.join(chips.TARGETS)}")
    if FLAGS.target == "cpu" and jax.device_count() != FLAGS.devices:
        raise SystemExit(f"JAX sees {jax.device_count()} devices, not --devices={FLAGS.devices}: start the "
                         "script directly (it sets XLA_FLAGS before importing JAX)")
    try:
        if FLAGS.out:
            storage.check_bucket(FLAGS.out, "--out")
        devices = None if FLAGS.target == "cpu" else targets.devices(FLAGS.target, FLAGS.devices)
        result = plan(cli.checked(CONFIG.value), FLAGS.hbm_gib, FLAGS.fast_compile, FLAGS.target, devices)
    except ValueError as e:
        raise SystemExit(f"plan: {e}")
    print(table(result))
    print(json.dumps(result, sort_keys=True))
    if FLAGS.out:
        storage.write_json(FLAGS.out, result, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse)
