"""Stage-1 and stage-2 train steps of a ViT-L-sized X-Former in bfloat16 on one accelerator, as one JSON object.

  python benchmarks/gpu_report.py           # ViT-L sizes on the first device (a few minutes on one H100 / H200)
  python benchmarks/gpu_report.py --tiny    # xformer_jax/configs/tiny.py sizes: a seconds-long smoke run, CPU too

Sizes (xformer_jax/configs/vit_l.py; random weights, nothing is read): CLIP ViT-L/14 at 224 px (24 layers,
width 1024, penultimate-layer features), MAE ViT-L/16 with its 8-layer, 512-wide decoder, a BERT-base Q-Former
(12 layers, 32 queries, cross-attention every 2nd layer), the X-Former dual block after the Q-Former with MAE
mask ratio 0.5, and for stage 2 an OPT-1.3B-shaped frozen LLM (24 layers, width 2048). Compute in bfloat16,
frozen towers stored in bfloat16, params and losses in float32, as configs/paper.py trains.

Per stage: examples/s over timed steps after warm-up, XLA's FLOPs per step (cost analysis of the compiled step:
XLA's own count, recomputation included; custom calls it cannot see, such as fused attention kernels, count
zero) and the model FLOPs utilisation: achieved FLOP/s over the chip's dense bf16 peak
(xformer_jax/plan/chips.py's, or --peak_tflops). The step runs on the first device alone, so
every figure is per chip. Next to the measured step time: the roofline lower bound of the same step
(launch/plan.py's: matmul FLOPs counted on the step's jaxpr over the peak, XLA's bytes accessed over the chip's
HBM bandwidth from xformer_jax/plan/chips.py) and how far above it the measured step is, so the first real
run says how close to the bound we are.
"""
import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

import common
import jax
import ml_collections
import numpy as np

from xformer_jax import factory
from xformer_jax.configs import tiny, vit_l
from xformer_jax.plan import chips, flops as flop_count
from xformer_jax.train import loop

def vit_l_configs(batches: tuple[int, int]) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """xformer_jax/configs/vit_l.py's stage-1 / stage-2 configs."""
    return _for_benchmark([vit_l.get_config("stage1"), vit_l.get_config("stage2_opt1.3b")], batches)


def tiny_configs(batches: tuple[int, int]) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """xformer_jax/configs/tiny.py's stage-1 / stage-2 configs, in bfloat16 as the full report runs."""
    workdir = pathlib.Path(tempfile.gettempdir()) / "gpu_report_tiny"
    configs = [tiny.tiny_config(workdir), tiny.tiny_stage2_config(workdir, tokenizer_path="")]
    for config in configs:
        config.model.update(dtype="bfloat16", frozen_dtype="bfloat16")
    return _for_benchmark(configs, batches)


def _for_benchmark(configs, batches: tuple[int, int]):
    """One device, the given global batches, a fixed schedule with no warm-up (no data to count epochs over)."""
    for config, batch in zip(configs, batches):
        config.batch_size = batch
        config.total_steps = config.total_steps or 1000
        config.mesh.update(data=-1, fsdp=1, tensor=1)
        config.optim.warmup_steps = 0
    return tuple(configs)


def stage2_batch(model_config, batch: int, max_len: int) -> dict:
    """Stage-1's synthetic images with right-padded LLM token ids ([bos] first) and their LM labels."""
    local = common.synthetic_batch(model_config, batch, max_len)
    llm = model_config.llm
    rng = np.random.default_rng(1)
    ids = rng.integers(4, llm.vocab_size, size=(batch, max_len)).astype(np.int32)
    ids[:, 0] = llm.bos_token_id
    mask = local["attention_mask"]
    local["input_ids"] = np.where(mask == 1, ids, llm.pad_token_id).astype(np.int32)
    local["labels"] = np.where(mask == 1, local["input_ids"], -100).astype(np.int32)
    return local


def run_stage(config, device, warmup: int, iters: int, peak) -> dict:
    """Compile the train step once (the cost analysis reads that executable), time it, derive the rates."""
    model_config = factory.model_config(config)
    if config.stage == "stage2":
        local = stage2_batch(model_config, config.batch_size, config.data.max_txt_len)
    else:
        local = common.synthetic_batch(model_config, config.batch_size, config.data.max_len)
    start = time.perf_counter()
    trainer = loop.make_trainer(config, load_pretrained=False, devices=[device])
    batch = trainer.global_batch(local)
    compiled = trainer.step_fn.lower(trainer.state, batch).compile()
    compile_s = time.perf_counter() - start
    flops, bytes_accessed = common.compiled_cost(compiled)
    model_flops = flop_count.matmul_flops(trainer.step_fn, trainer.state, batch)  # counted on the jaxpr (plan/flops.py)
    holder = {"state": trainer.state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return jax.block_until_ready(metrics)

    step_s = common.time_calls(step, warmup, iters)
    losses = {k: float(v) for k, v in jax.device_get(step()).items() if k.startswith("loss")}
    achieved = flops / step_s
    chip = chips.for_device_kind(device.device_kind)
    bound = None if chip is None or peak is None else chips.roofline(
        dataclasses.replace(chip, peak_bf16_tflops=peak), model_flops, bytes_accessed, model_flops)
    return {"batch": config.batch_size, "build_and_compile_s": round(compile_s, 1), "step_s": step_s,
            "examples_per_s": config.batch_size / step_s, "xla_flops_per_step": flops,
            "xla_bytes_accessed_per_step": bytes_accessed, "achieved_tflops_per_s": achieved / 1e12,
            "mfu": None if peak is None else achieved / (peak * 1e12),
            "model_flops_per_step": model_flops, "roofline": bound,
            "step_s_over_roofline": None if bound is None else step_s / bound["step_s_lower_bound"],
            "trainable_params": common.count_params(holder["state"].params),
            "frozen_params": common.count_params(holder["state"].frozen), "last_losses": losses}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="xformer_jax/configs/tiny.py sizes (a smoke run, CPU too)")
    parser.add_argument("--stage1_batch", type=int, default=0, help="default 128 (8 with --tiny)")
    parser.add_argument("--stage2_batch", type=int, default=0, help="default 64 (8 with --tiny)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--stages", default="stage1,stage2", help="comma-separated subset of stage1,stage2")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="dense bf16 peak per chip (default: table)")
    args = parser.parse_args(argv)
    stages = args.stages.split(",")
    if not stages or set(stages) - {"stage1", "stage2"}:
        parser.error(f"--stages={args.stages}: expected a comma-separated subset of stage1,stage2")
    device = jax.devices()[0]
    peak = args.peak_tflops or chips.peak_tflops(device.device_kind)
    make = tiny_configs if args.tiny else vit_l_configs
    default_batches = (8, 8) if args.tiny else (128, 64)
    stage1, stage2 = make((args.stage1_batch or default_batches[0], args.stage2_batch or default_batches[1]))
    report = {"device_kind": device.device_kind, "platform": device.platform, "peak_bf16_tflops_per_chip": peak,
              "sizes": "tiny" if args.tiny else "vit_l", "jax": jax.__version__, "dtype": stage1.model.dtype,
              "frozen_dtype": stage1.model.frozen_dtype}
    for name, config in (("stage1", stage1), ("stage2", stage2)):
        if name in stages:
            report[name] = run_stage(config, device, args.warmup, args.iters, peak)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
