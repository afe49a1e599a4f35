"""Every launch script answers --help (exit 0, its flags listed) and a user's mistake with one line that names
the flag, key or file and the valid choices, never a traceback: a missing required flag, a value of the wrong
type, an unknown config variant or key, a config file that does not exist, a run directory that does not
exist. The scripts run as a user runs them, as subprocesses (started together: most of their time is imports)."""
import subprocess
import sys

import pytest

from processes import REPO, subprocess_env

HELP = {  # script -> a flag its --help must list
    "launch/train.py": "--config", "launch/evaluate.py": "vqa", "launch/generate.py": "--workdir",
    "launch/convert.py": "--hf", "launch/export.py": "--checkpoint", "launch/plan.py": "--target",
    "launch/tpu_vm.py": "--tpu", "launch/gpu_cluster.py": "--hosts", "-m xformer_jax.configs.show": "--config",
    "launch/demo.py": "--workdir",
}
MISSING = "/nonexistent/run"
MISTAKES = {  # (args) -> what the one line must say
    "train: no --workdir": ("launch/train.py --config=configs/demo.py:stage1",
                            "--workdir is required"),
    "train: no --config": (f"launch/train.py --workdir={MISSING}", "--config is required"),
    "train: wrong type": (f"launch/train.py --config=configs/demo.py:stage1 --workdir={MISSING} "
                          "--config.batch_size=big", "--config.batch_size=big: invalid literal for int()"),
    "train: unknown variant": (f"launch/train.py --config=configs/paper.py:stage3 --workdir={MISSING}",
                               "configs/paper.py:stage3: unknown variant; available: stage1, stage1_blip2"),
    "train: unknown key": (f"launch/train.py --config=configs/demo.py:stage1 --workdir={MISSING} "
                           "--config.batch_sise=8", "config has no key 'batch_sise'; did you mean config.batch_size?"),
    "train: no config file": (f"launch/train.py --config=configs/nope.py --workdir={MISSING}",
                              "--config=configs/nope.py: configs/nope.py is not a config file"),
    "train: synthetic data in a bucket": (f"launch/train.py --config=configs/demo.py:stage1 --workdir={MISSING} "
                                          "--config.data.path=gs://b/scenes",
                                          "config.data.path=gs://b/scenes: the synthetic dataset is written to local disk"),
    "demo: bucket workdir": ("launch/demo.py --workdir=gs://b/demo", "--workdir=gs://b/demo: the demo runs in a local"),
    "plan: unknown variant": ("launch/plan.py --config=configs/paper.py:stage9", "configs/paper.py:stage9: unknown"),
    "plan: wrong type": ("launch/plan.py --config=configs/demo.py:stage1 --devices=many",
                         "--devices='many' must be a positive integer"),
    "show: wrong type": ("-m xformer_jax.configs.show configs/demo.py:stage1 --config.seed=x",
                         "--config.seed=x: invalid literal for int()"),
    "show: unknown variant": ("-m xformer_jax.configs.show configs/demo.py:stage3",
                              "configs/demo.py:stage3: unknown variant; available: ('stage1', 'stage2')"),
    "evaluate: missing run": (f"launch/evaluate.py vqa --workdir={MISSING} --questions=q.json --image_root=. "
                              "--annotations=a.json --out=out", f"--workdir={MISSING}: checkpoint not found"),
    "evaluate: unknown task": ("launch/evaluate.py vqa2", "invalid choice: 'vqa2' (choose from 'score', 'vqa'"),
    "evaluate: missing flags": ("launch/evaluate.py gqa", "the following arguments are required: --workdir"),
    "generate: missing run": (f"launch/generate.py --workdir={MISSING} --images=a.png",
                              f"--workdir={MISSING}: checkpoint not found"),
    "generate: wrong type": (f"launch/generate.py --workdir={MISSING} --images=a.png --num_beams=five",
                             "argument --num_beams: invalid int value: 'five'"),
    "export: missing run": (f"launch/export.py --workdir={MISSING} --out=out",
                            f"--workdir={MISSING}: checkpoint not found"),
    "convert: missing dir": (f"launch/convert.py --hf={MISSING} --out=out",
                             f"checkpoint directory not found: {MISSING}"),
    "tpu_vm: no command": ("launch/tpu_vm.py --tpu=t --zone=z", "no command given"),
    "gpu_cluster: bad launcher": ("launch/gpu_cluster.py --launcher=mpi -- launch/train.py",
                                  "argument --launcher: invalid choice: 'mpi' (choose from 'ssh', 'srun')"),
}


def _run_all(commands: dict) -> dict:
    """{name: CompletedProcess-like (returncode, output)} of the commands, run side by side from the repo root."""
    procs = {name: subprocess.Popen([sys.executable, *args.split()], cwd=REPO, env=subprocess_env(1),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, args in commands.items()}
    return {name: (proc.communicate(timeout=300)[0], proc.returncode) for name, proc in procs.items()}


@pytest.fixture(scope="module")
def helps():
    return _run_all({script: f"{script} --help" for script in HELP})


@pytest.fixture(scope="module")
def mistakes():
    return _run_all({name: args for name, (args, _) in MISTAKES.items()})


@pytest.mark.parametrize("script", list(HELP))
def test_help_exits_0_and_lists_the_flags(helps, script):
    output, code = helps[script]
    assert code == 0, output
    assert HELP[script] in output, output


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_is_one_line_naming_it(mistakes, name):
    output, code = mistakes[name]
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0, output
    assert len(lines) == 1 and "Traceback" not in output, output
    assert MISTAKES[name][1] in lines[0], lines[0]
