"""Stage-1 train-step examples/s: our jitted step against a PyTorch eager step of the same model.

The PyTorch side (`benchmarks/torch_stage1.py`) is assembled from transformers' modules (CLIPVisionModel,
ViTMAEForPreTraining, Blip2QFormerModel, ...) with the same four losses, passes, layers, widths and batch,
and an AdamW step on the trainable params (towers frozen). Same config, batch, dtype (float32 unless
--dtype) and inputs in one process; prints one JSON object with the ratio (JAX / PyTorch examples/s),
XLA's FLOPs per step (cost analysis of the compiled step) and the achieved FLOP/s.

  python benchmarks/stage1_step.py                 # configs/demo.py:stage1 sizes, random Q-Former, batch 16
  python benchmarks/stage1_step.py --small         # xformer_jax/configs/tiny.py sizes, a quick check
  python benchmarks/stage1_step.py --batch 32 --iters 10 --torch_itg joint
  python benchmarks/stage1_step.py --threads 1    # both on one core (fairer on a busy machine)
  python benchmarks/stage1_step.py --dtype bfloat16
  python benchmarks/stage1_step.py --sizes vit_l --batch 128 --dtype bfloat16 --device cuda --torch_compile
                                                  # one GPU: ViT-L sizes (xformer_jax/configs/vit_l.py), the
                                                  # reference on CUDA under bf16 autocast, eager and compiled

With --dtype bfloat16 the reference's frozen towers are stored in bfloat16 (LAVIS keeps its ViT in half
precision) and its step runs under torch.autocast; ours runs configs' bfloat16 compute with the towers stored
in bfloat16 too. --torch_compile adds torch.compile of the same reference as a third contestant.

Timing alternates the two steps (jax, torch, jax, torch, ...) after warm-up, so both see the same
machine load; `ratio` is the ratio of mean examples/s, `ratio_median_of_pairs` the median over
iterations of torch_step_s / jax_step_s. By default both frameworks use every core
(torch.set_num_threads(os.cpu_count()); XLA's pool sizes itself from the affinity mask). On a machine
that other jobs keep busy, a multi-threaded torch step stalls badly at its OpenMP barriers (and XLA's
pool suffers too); `--threads N` pins the process to N cores, so both frameworks get the same ones.
"""
import argparse
import json
import os
import pathlib
import tempfile
import time
from typing import Callable

import common
from common import count_params, synthetic_batch, xla_flops

THREADS = common.limit_threads()  # before jax / torch start

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import torch_stage1  # noqa: E402
from xformer_jax import factory  # noqa: E402
from xformer_jax.configs import demo, tiny, vit_l  # noqa: E402
from xformer_jax.train import loop  # noqa: E402


SIZES = {"demo": "configs/demo.py:stage1 (random Q-Former)", "small": "xformer_jax/configs/tiny.py",
         "vit_l": "xformer_jax/configs/vit_l.py:stage1 (random weights)"}


def make_config(sizes: str, batch: int):
    if sizes == "small":
        config = tiny.tiny_config(pathlib.Path(tempfile.gettempdir()) / "stage1_step_bench")
    else:
        config = demo.get_config("stage1") if sizes == "demo" else vit_l.get_config("stage1")
        config.model.qformer.bert_dir = ""  # random Q-Former: no weights are read
        config.data.num_workers = 0
    config.batch_size = batch
    config.model.itm_shared_image_kv = True  # one device: project each image's ITM keys / values once
    return config


def summary(config, model_config) -> dict:
    v, m, q, f = model_config.vision, model_config.mae, model_config.qformer, model_config.fusion
    return {"vision": dict(kind=v.kind, width=v.hidden_size, layers=v.num_hidden_layers,
                           feature_layer=v.feature_layer, image_size=v.image_size, patch=v.patch_size),
            "mae": dict(width=m.hidden_size, layers=m.num_hidden_layers, decoder_width=m.decoder_hidden_size,
                        decoder_layers=m.decoder_num_hidden_layers, image_size=m.image_size, patch=m.patch_size),
            "qformer": dict(width=q.hidden_size, layers=q.num_hidden_layers, heads=q.num_attention_heads,
                            intermediate=q.intermediate_size, queries=q.num_query_tokens, vocab=q.vocab_size,
                            cross_attention_freq=q.cross_attention_freq, embed_dim=q.embed_dim),
            "fusion": dict(kind=f.kind, placement=f.placement, mask_ratio=f.mask_ratio,
                           intermediate=f.intermediate_size),
            "text_len": config.data.max_len, "itc_grad": config.loss.itc_grad,
            "itm_shared_image_kv": config.model.itm_shared_image_kv}


def setup_jax(config, local) -> tuple[dict, Callable]:
    """Our trainer's jitted step on the synthetic batch: (info, step) with step() blocking until done."""
    trainer = loop.make_trainer(config, load_pretrained=False)
    batch = trainer.global_batch(local)
    flops, bytes_accessed = xla_flops(trainer.step_fn, trainer.state, batch)
    holder = {"state": trainer.state}

    def step():  # waits for the new state too, so no work spills into the next (torch) timing
        holder["state"], metrics = jax.block_until_ready(trainer.step_fn(holder["state"], batch))
        return metrics

    start = time.perf_counter()
    metrics = step()
    info = {"first_call_s": time.perf_counter() - start,
            "first_step_losses": {k: float(v) for k, v in jax.device_get(metrics).items() if k.startswith("loss")},
            "trainable_params": count_params(holder["state"].params),
            "xla_flops_per_step": flops, "xla_bytes_accessed_per_step": bytes_accessed}
    return info, step


def setup_torch(model_config, local, optim, itg: str, dtype: str, device: str,
                compiled: bool = False) -> tuple[dict, Callable]:
    """The transformers-built reference and its AdamW on the same batch: (info, step); `compiled`: the
    reference under torch.compile."""
    torch.set_num_threads(THREADS)  # os.cpu_count() unless --threads said otherwise
    torch.manual_seed(0)
    model = torch_stage1.TorchStage1(model_config, itg=itg).train().to(device)
    if dtype == "bfloat16":  # frozen towers stored in half precision, as LAVIS keeps its ViT
        model.clip.to(torch.bfloat16)
        model.mae.to(torch.bfloat16)
    optimizer = torch_stage1.make_optimizer(model, optim)
    runner = torch.compile(model) if compiled else model
    batch = {k: (torch.from_numpy(local[k]).long() if local[k].dtype.kind == "i" else torch.from_numpy(local[k]))
             .to(device) for k in ("pixel_values", "mae_pixel_values", "input_ids", "attention_mask")}

    def step():  # train_step reads the losses back (.item()), which waits for the device
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            return torch_stage1.train_step(runner, optimizer, batch)

    first = step()
    info = {"first_step_losses": {f"loss_{k}" if k != "loss" else k: v for k, v in first.items()},
            "trainable_params": sum(p.numel() for p in torch_stage1.trainable_parameters(model)),
            "itg": itg, "autocast": dtype == "bfloat16", "device": device, "torch_compile": compiled}
    if not compiled:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)  # counts matmuls, convolutions and attention only
        with counter:
            step()
        info["matmul_flops_per_step"] = float(counter.get_total_flops())
    return info, step


def time_interleaved(steps: dict, warmup: int, iters: int) -> dict:
    """Alternates the frameworks' steps (A B A B ...) so that both see the same machine load."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def stats(times: np.ndarray, batch: int) -> dict:
    step_s = float(times.mean())
    return {"step_s": step_s, "step_s_median": float(np.median(times)), "step_s_min": float(times.min()),
            "examples_per_s": batch / step_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", choices=tuple(SIZES), default="demo",
                        help="; ".join(f"{k}: {v}" for k, v in SIZES.items()))
    parser.add_argument("--small", action="store_true", help="the same as --sizes=small")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype: config.model.dtype for ours, torch.autocast for the reference")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="the reference's device (ours runs on JAX's default backend)")
    parser.add_argument("--torch_compile", action="store_true", help="also time torch.compile of the reference")
    parser.add_argument("--torch_itg", choices=("cache", "joint"), default="cache",
                        help="torch ITG: text pass on cached query keys/values (ours) or one UniLM joint pass")
    parser.add_argument("--skip_torch", action="store_true", help="time the JAX step only")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin to this many cores; torch threads = that (0: all cores, no pinning)")
    args = parser.parse_args()
    sizes = "small" if args.small else args.sizes
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: torch sees no CUDA device")

    config = make_config(sizes, args.batch)
    config.model.dtype = args.dtype
    model_config = factory.stage1_config(config.model)
    local = synthetic_batch(model_config, args.batch, config.data.max_len)
    results = {"config": SIZES[sizes], "model": summary(config, model_config), "batch": args.batch,
               "dtype": args.dtype, "warmup": args.warmup, "iters": args.iters, "timing": "interleaved steps"}
    jax_info, jax_step = setup_jax(config, local)
    steps, infos = {"jax": jax_step}, {"jax": jax_info}
    if not args.skip_torch:
        contestants = [("torch", False)] + ([("torch_compile", True)] if args.torch_compile else [])
        for name, compiled in contestants:
            infos[name], steps[name] = setup_torch(model_config, local, config.optim, args.torch_itg, args.dtype,
                                                   args.device, compiled)
    times = time_interleaved(steps, args.warmup, args.iters)
    for name in steps:
        results[name] = {**stats(times[name], args.batch), **infos[name]}
    results["jax"]["achieved_flops_per_s"] = jax_info["xla_flops_per_step"] / results["jax"]["step_s"]
    if "torch" in steps:
        results["torch"]["achieved_matmul_flops_per_s"] = (infos["torch"]["matmul_flops_per_step"]
                                                           / results["torch"]["step_s"])
        results["ratio"] = results["jax"]["examples_per_s"] / results["torch"]["examples_per_s"]
        results["ratio_median_of_pairs"] = float(np.median(times["torch"] / times["jax"]))
    if "torch_compile" in steps:
        results["ratio_vs_torch_compile"] = (results["jax"]["examples_per_s"]
                                             / results["torch_compile"]["examples_per_s"])
    results["machine"] = {**common.machine(), "threads": THREADS, "load_average_1m": os.getloadavg()[0],
                          "torch_device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
