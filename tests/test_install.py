"""README's Install section is what is run: its CPU block is `make venv`'s commands, its GPU and TPU blocks
are `script_args.install_lines`, which launch/gpu_cluster.py --setup=pip and launch/tpu_vm.py run on every
host, and every extra they name exists in setup.py."""
import ast
import os
import re
import shlex
import subprocess

import pytest

from launch import gpu_cluster, tpu_vm
from processes import REPO
import script_args


def readme_blocks() -> list[list[str]]:
    """The lines of every ``` block of README's Install section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Install"):text.index("\n## ", text.index("## Install") + 1)]
    return [block.strip().splitlines() for block in re.findall(r"```\n(.*?)```", section, re.S)]


def setup_extras() -> set:
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    extras = next(k.value for k in call.keywords if k.arg == "extras_require")
    return {key.value for key in extras.keys}


def test_the_cpu_block_is_what_make_venv_runs():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    commands = subprocess.run(["make", "--no-print-directory", "-n", "-B", "venv", "DEVICE=cpu"], cwd=REPO, env=env,
                              capture_output=True, text=True, check=True).stdout.splitlines()
    installs = [line for line in commands if " -m pip install " in line]
    cpu = readme_blocks()[0]
    assert installs == cpu[1:], (installs, cpu)
    assert "-m venv .venv" in commands[0] and cpu[0] == "python3 -m venv .venv"


@pytest.mark.parametrize("platform", ["gpu", "gpu-cuda13", "tpu"])
def test_the_gpu_and_tpu_blocks_are_the_launchers_install(platform):
    assert script_args.install_lines(platform) in readme_blocks()
    extras = script_args.PLATFORM_EXTRAS[platform].split(",")
    assert set(extras) <= setup_extras()


def test_the_launchers_run_the_readme_install(capsys):
    tpu_vm.main(["--tpu=pod", "--zone=z", "--copy=none", "--dry_run", "--", "launch/train.py"])
    setup = shlex.split(capsys.readouterr().out.splitlines()[0])[-1]
    assert setup == "--command=" + " && ".join(["cd xformer-jax", *script_args.install_lines("tpu")])
    for cuda, platform in (("12", "gpu"), ("13", "gpu-cuda13")):
        gpu_cluster.main(["--hosts=h1,h2", "--repo_dir=/shared/xj", "--setup=pip", f"--cuda={cuda}", "--dry_run",
                          "--", "launch/train.py"], environ={})
        lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
        assert [line[:2] for line in lines[:2]] == [["ssh", "h1"], ["ssh", "h2"]]  # one host after another
        assert lines[0][2] == " && ".join(["cd /shared/xj", *script_args.install_lines(platform)])


def test_a_command_written_with_python_runs_in_the_hosts_venv(capsys):
    """docs/reproduce.md writes `python launch/train.py ...`; the workers run it with their venv's Python."""
    for command in (["python", "launch/train.py", "--workdir=w"], ["launch/train.py", "--workdir=w"]):
        tpu_vm.main(["--tpu=pod", "--zone=z", "--copy=none", "--setup=none", "--dry_run", "--", *command])
        assert "cd xformer-jax && .venv/bin/python launch/train.py --workdir=w" in capsys.readouterr().out
        gpu_cluster.main(["--hosts=h1", "--repo_dir=/shared/xj", "--dry_run", "--", *command], environ={})
        assert ".venv/bin/python launch/train.py --workdir=w" in capsys.readouterr().out


def test_the_named_extras_exist():
    assert {"gpu", "gpu-cuda13", "tpu", "gcs", "plan", "test", "torch"} <= setup_extras()
