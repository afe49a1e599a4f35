"""launch/plan.py on a shrunk config, parameter counts at the paper's sizes, the launchers' dry runs."""
import json
import os
import subprocess
import sys

import pytest

from launch import gpu_cluster, tpu_vm
from xformer_jax.configs import paper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3

# The demo config cut to one block per tower and two Q-Former layers: compiles in seconds on CPU.
SHRINK = ["--config.model.vision.num_hidden_layers=1", "--config.model.vision.feature_layer=-1",
          "--config.model.mae.num_hidden_layers=1", "--config.model.mae.decoder_num_hidden_layers=1",
          "--config.model.qformer.num_hidden_layers=2"]


def _plan(*flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "launch/plan.py", "--config=configs/demo.py:stage1", *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc


def test_plan_names_an_unknown_override_key():
    proc = _plan("--devices=1", "--config.model.fusion.layer_norm_ep=1e-6")
    assert proc.returncode != 0
    assert ("--config.model.fusion.layer_norm_ep: config.model.fusion has no key 'layer_norm_ep'; did you mean "
            "config.model.fusion.layer_norm_eps?") in proc.stderr


def test_plan_prints_memory_and_flops_for_a_simulated_mesh(tmp_path):
    proc = _plan("--devices=8", "--config.mesh.data=4", "--config.mesh.fsdp=2", f"--out={tmp_path}/plan.json", *SHRINK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert json.loads((tmp_path / "plan.json").read_text()) == result
    assert result["devices"] == 8 and result["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert result["batch_per_device"] == 2
    assert result["flops_per_device"] > 0 and result["flops_total"] == pytest.approx(8 * result["flops_per_device"])
    b = result["bytes_per_device"]
    assert b["argument"] > 0 and b["temp"] > 0 and b["peak_estimate"] > 0
    # State donated: the output state reuses the argument buffers.
    assert b["alias"] > 0
    assert b["peak_estimate"] == b["argument"] + b["output"] - b["alias"] + b["temp"]
    # fsdp=2 halves the params' "embed" dims: per-device trainable bytes well under the float32 total.
    assert b["params_trainable"] < 4 * result["params_trainable"]
    assert b["optimizer_state"] == pytest.approx(2 * b["params_trainable"], rel=0.01)
    assert result["fits"] is True and "fits 32 GiB per chip" in proc.stdout


def test_plan_names_the_batch_size_that_does_not_divide():
    proc = _plan("--devices=8", "--config.batch_size=20", "--config.mesh.data=8", *SHRINK)
    assert proc.returncode != 0
    assert "config.batch_size=20" in proc.stderr and "16 or 24" in proc.stderr


def test_paper_config_variants():
    base = paper.get_config("stage1")
    assert base.batch_size == 1680 and base.model.dtype == "bfloat16" and base.model.frozen_dtype == "bfloat16"
    assert (base.optim.b1, base.optim.b2, base.optim.weight_decay) == (0.9, 0.98, 0.05)
    assert (base.mesh.data, base.mesh.fsdp) == (1, -1)
    assert paper.get_config("stage1_blip2").model.fusion.kind == "blip2"
    assert paper.get_config("stage1_xformer_norec").loss.weights.rec == 0.0
    with pytest.raises(ValueError, match="stage2"):
        paper.get_config("stage2")


def test_param_counts_at_paper_sizes():
    proc = subprocess.run([sys.executable, "benchmarks/param_counts.py", "--config=configs/paper.py:stage1",
                           "--variants=blip2,xformer"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)["variants"]
    extra = results["xformer"]["extra_trainable_over_blip2"]
    assert 15e6 < extra < 25e6, extra
    assert results["xformer"]["frozen"] == results["xformer"]["frozen_vision"] + results["xformer"]["frozen_mae"]
    assert 0.98e9 < results["blip2"]["frozen_vision"] < 1.0e9  # EVA ViT-g, 39 blocks
    assert 0.18e9 < results["blip2"]["trainable"] < 0.19e9  # BLIP-2's ~188M Q-Former


def test_tpu_vm_dry_run(capsys):
    rc = tpu_vm.main(["--tpu=pod", "--zone=us-east5-a", "--project=p", "--dry_run", "--",
                      "launch/train.py", "--config=configs/paper.py:stage1", "--workdir=gs://b/run"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("sh -c") and "git ls-files" in lines[0]
    assert lines[1].startswith("gcloud compute tpus tpu-vm scp /tmp/xformer_jax_src.tgz pod:/tmp/")
    assert all("--worker=all" in line and "--zone=us-east5-a" in line and "--project=p" in line
               for line in lines[1:])
    assert "'.[tpu,gcs]'" in lines[3]  # README's TPU install (tests/test_install.py)
    assert lines[4].startswith("gcloud compute tpus tpu-vm ssh pod ")
    assert ("cd xformer-jax && .venv/bin/python launch/train.py --config=configs/paper.py:stage1 "
            "--workdir=gs://b/run") in lines[4]


def test_tpu_vm_clone_and_no_setup(capsys):
    tpu_vm.main(["--tpu=v4", "--zone=z", "--repo=https://example.com/x.git", "--setup=none", "--background",
                 "--dry_run", "--", "launch/train.py", "--config=c"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "git clone https://example.com/x.git xformer-jax" in lines[0]
    assert "nohup" in lines[1] and "train.log" in lines[1]


def test_gpu_cluster_dry_run_ssh(capsys):
    rc = gpu_cluster.main(["--hosts=h1,h2", "--gpus_per_host=8", "--repo_dir=/shared/xj", "--dry_run", "--",
                           "launch/train.py", "--config=configs/paper.py:stage1", "--workdir=/shared/run"], environ={})
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for i, (line, host) in enumerate(zip(lines, ("h1", "h2"))):
        assert line.startswith(f"ssh {host} 'cd /shared/xj && ")
        assert ".venv/bin/python launch/train.py --config=configs/paper.py:stage1 --workdir=/shared/run" in line
        assert f"--coordinator_address=h1:12355 --num_processes=2 --process_id={i}'" in line


def test_gpu_cluster_slurm(capsys):
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[01-02,10],cpu3"}
    assert gpu_cluster.expand_nodelist(env["SLURM_JOB_NODELIST"]) == ["gpu01", "gpu02", "gpu10", "cpu3"]
    gpu_cluster.main(["--process_per=gpu", "--gpus_per_host=4", "--dry_run", "--", "launch/train.py", "--config=c"],
                     environ=env)
    line = capsys.readouterr().out.strip()
    assert line.startswith("srun --nodes=4 --ntasks-per-node=4 ")
    assert "CUDA_VISIBLE_DEVICES=$SLURM_LOCALID" in line
    assert "--coordinator_address=gpu01:12355 --num_processes=16 --process_id=$SLURM_PROCID" in line


def test_plan_lists_the_valid_targets_and_slice_sizes():
    from xformer_jax.plan import targets
    proc = _plan("--devices=8", "--target=tpu-v9", *SHRINK)
    assert proc.returncode != 0 and "tpu-v9" in proc.stderr and "tpu-v5p" in proc.stderr and "h200" in proc.stderr
    with pytest.raises(ValueError, match="power of two"):
        targets.devices("tpu-v5p", 6)
    with pytest.raises(ValueError, match="multiple of 8"):
        targets.devices("a100-40gb", 12)
    assert targets._dims(16, 3) == (2, 2, 4) and targets._dims(64, 2) == (8, 8)


def test_jaxpr_flops_count_matmuls_scans_and_convolutions():
    import jax
    import jax.numpy as jnp

    from xformer_jax.plan import flops
    a, b = jnp.zeros((3, 5, 7)), jnp.zeros((3, 7, 11))
    assert flops.matmul_flops(jnp.matmul, a, b) == 2 * 3 * 5 * 7 * 11
    scanned = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4)[0]
    assert flops.matmul_flops(scanned, jnp.zeros((2, 6)), jnp.zeros((6, 6))) == 4 * 2 * 2 * 6 * 6
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "VALID")  # NCHW, OIHW
    assert flops.matmul_flops(conv, jnp.zeros((1, 3, 8, 8)), jnp.zeros((5, 3, 2, 2))) == 2 * (5 * 4 * 4) * (3 * 2 * 2)


def test_jaxpr_flops_match_the_compiled_step(tmp_path):
    """The jaxpr count (what the roofline and the GPU rows use) equals the dots and convolutions in XLA:CPU's
    compiled HLO of the same step, every layer unrolled (a compiler counts a scanned layer once)."""
    from launch import plan
    from xformer_jax.plan import profile
    from xformer_jax.configs import tiny
    from xformer_jax.plan import flops
    config = tiny.tiny_config(tmp_path)
    config.mesh.update(data=2, fsdp=4)
    assert not any(config.model[k].get("scan_layers", False) for k in plan.REMAT_SECTIONS if config.model.get(k))
    trainer = plan.abstract_trainer(config)
    counted = flops.matmul_flops(trainer.step_fn, trainer.state, trainer.batch) / trainer.mesh.size
    compiled = trainer.step_fn.lower(trainer.state, trainer.batch).compile(plan.FAST_COMPILE)
    instructions, _ = profile.parse_hlo(compiled.as_text())
    in_hlo = sum(profile.MATMUL_OPS[op](instructions, name) for name, (_, op, _) in instructions.items()
                 if op in profile.MATMUL_OPS)  # every dot and convolution once, fused or not
    assert in_hlo == pytest.approx(counted, rel=0.01)


# One TPU and one GPU target, compiled by their own compilers with no chip (needs `pip install '.[plan]'`).
REAL_TARGETS = {"tpu-v5e": "libtpu", "a100-40gb": "jax_plugins.xla_cuda12"}


@pytest.mark.parametrize("target", sorted(REAL_TARGETS))
def test_plan_with_a_real_compiler(target, tmp_path):
    pytest.importorskip(REAL_TARGETS[target], reason=f"the {target} compiler comes with pip install -e '.[plan]'")
    from xformer_jax.configs import tiny
    from launch import plan
    from xformer_jax.plan import chips, targets
    config = tiny.tiny_config(tmp_path)
    config.batch_size = 256  # activations, not params, dominate the temporaries: what remat trades
    config.mesh.update(data=2, fsdp=2)
    devices = targets.devices(target, 4)
    results = {}
    for remat in (False, True):
        config.model.qformer.remat = remat
        results[remat] = plan.plan(config, target=target, devices=devices)
    result = results[False]
    b = result["bytes_per_device"]
    assert result["devices"] == 4 and result["hbm_gib"] == chips.CHIPS[target].hbm_gib
    assert b["peak_estimate"] == b["argument"] + b["output"] - b["alias"] + b["temp"] > 0
    assert result["fits"] == (b["peak_estimate"] <= result["hbm_gib"] * GIB)
    assert result["headroom"] == pytest.approx(1 - b["peak_estimate"] / (result["hbm_gib"] * GIB), abs=1e-4)
    # The Q-Former recomputes its layers in the backward pass: fewer temporaries, more executed FLOPs, the
    # same model FLOPs.
    assert results[True]["bytes_per_device"]["temp"] < b["temp"]
    flops_off, flops_on = result["jaxpr_flops_per_device"], results[True]["jaxpr_flops_per_device"]
    assert flops_on["executed"] > flops_off["executed"] == flops_off["model"] == flops_on["model"] > 0
    roof = result["roofline"]
    assert roof["step_s_lower_bound"] >= roof["compute_s"] > 0 and 0 < roof["mfu_upper_bound"] <= 1
