"""benchmarks/gpu_report.py: the peak table, the ViT-L configs it runs, and a --tiny smoke run on CPU."""
import json
import math
import os
import subprocess
import sys

import pytest

from xformer_jax import factory
from xformer_jax.configs import vit_l
from xformer_jax.plan.chips import peak_tflops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind, peak", [("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0),
                                        ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("TPU v5 lite", 197.0), ("cpu", None)])
def test_peak_of_device_kind(kind, peak):
    assert peak_tflops(kind) == peak


def test_vit_l_configs_have_the_reported_sizes():
    stage1, stage2 = vit_l.get_config("stage1"), vit_l.get_config("stage2_opt1.3b")
    assert (stage1.stage, stage2.stage) == ("stage1", "stage2")
    for config in (stage1, stage2):
        model = factory.model_config(config)  # validates widths (Q-Former encoder_width = vision width)
        assert (model.vision.hidden_size, model.vision.num_hidden_layers, model.vision.patch_size) == (1024, 24, 14)
        assert (model.mae.hidden_size, model.mae.num_hidden_layers, model.qformer.hidden_size) == (1024, 24, 768)
        assert config.model.dtype == config.model.frozen_dtype == "bfloat16"
    assert (factory.model_config(stage2).llm.hidden_size, factory.model_config(stage2).llm.num_hidden_layers) == (2048, 24)


def test_tiny_run_reports_rates_flops_and_mfu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_report.py", "--tiny", "--stages=stage2", "--warmup=1",
                           "--iters=2", "--peak_tflops=0.5"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "stage1" not in report and report["sizes"] == "tiny" and report["peak_bf16_tflops_per_chip"] == 0.5
    stage = report["stage2"]
    assert stage["batch"] == 8 and stage["xla_flops_per_step"] > 0 and stage["step_s"] > 0
    assert stage["examples_per_s"] == pytest.approx(8 / stage["step_s"])
    assert stage["achieved_tflops_per_s"] == pytest.approx(stage["xla_flops_per_step"] / stage["step_s"] / 1e12)
    assert stage["mfu"] == pytest.approx(stage["achieved_tflops_per_s"] / 0.5)
    assert stage["trainable_params"] > 0 and stage["frozen_params"] > 0
    assert all(math.isfinite(v) for v in stage["last_losses"].values())


def test_stage1_step_against_pytorch_with_bf16_towers_on_cpu():
    """benchmarks/stage1_step.py's GPU path (frozen towers in bf16 under autocast) end to end at tiny sizes on
    the CPU; on a GPU the same command takes --device=cuda (and --torch_compile, which inductor's C++ build
    makes too slow for the suite here)."""
    from processes import subprocess_env
    proc = subprocess.run([sys.executable, "stage1_step.py", "--small", "--batch=8", "--iters=1", "--warmup=1",
                           "--dtype=bfloat16", "--device=cpu"], cwd=os.path.join(REPO, "benchmarks"),
                          env=subprocess_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["torch"]["autocast"] and report["torch"]["device"] == "cpu"
    for name in ("jax", "torch"):
        assert math.isfinite(report[name]["first_step_losses"]["loss"]) and report[name]["examples_per_s"] > 0
    assert report["ratio"] > 0
