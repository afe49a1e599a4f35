"""Start launch/train.py (or any launch/*.py taking the same flags) on several GPU hosts.

  python launch/gpu_cluster.py --hosts=node1,node2 --gpus_per_host=8 [--dry_run] -- \
      launch/train.py --config=configs/paper.py:stage1 --workdir=/shared/runs/stage1
  # inside a SLURM allocation (salloc / sbatch): hosts come from SLURM_JOB_NODELIST, one srun line
  python launch/gpu_cluster.py --launcher=srun --gpus_per_host=8 -- launch/train.py ...

Every process gets --coordinator_address=HOST0:PORT --num_processes=N --process_id=i, which
launch/train.py hands to jax.distributed.initialize(). --process_per=host (default) runs one process
per host driving GPUs 0..gpus_per_host-1 (N = hosts); --process_per=gpu runs one per GPU
(N = hosts * gpus_per_host); CUDA_VISIBLE_DEVICES is set accordingly.
  ssh:  one `ssh HOST 'cd DIR && ...'` per host, started together; if one fails the others' ssh are ended.
  srun: one `srun --nodes=H --ntasks-per-node=P` line; each task takes its id from $SLURM_PROCID.
The code must already be at --repo_dir on every host (a shared filesystem, or a clone on each), and
weights and data where every host reads them (a bucket: gs:// paths work everywhere, or a shared disk).
--setup=pip first runs README's GPU install there (`script_args.install_lines`: a venv,
`pip install -c constraints.txt -e '.[gpu,gcs]'`, or '.[gpu-cuda13,gcs]' with --cuda=13, and the
Q-Former vocab package), one host after another (a shared venv is written once at a time);
--setup=none (default) expects the venv to be there.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import time

import script_args  # launch/script_args.py, beside this script


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list ("gpu[01-03,07],login1") as a list of names, in order."""
    hosts, depth, start = [], 0, 0
    parts = []
    for i, ch in enumerate(nodelist + ","):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    for part in filter(None, parts):
        match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{str(n).zfill(len(lo))}{suffix}")
    return hosts


def parse(argv, environ):
    parser = script_args.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="", help="comma-separated host names; the first is the coordinator "
                        "(default: SLURM_JOB_NODELIST)")
    parser.add_argument("--gpus_per_host", type=int, default=8)
    parser.add_argument("--process_per", choices=("host", "gpu"), default="host")
    parser.add_argument("--port", type=int, default=12355, help="coordinator port on the first host")
    parser.add_argument("--launcher", choices=("ssh", "srun"), default="",
                        help="default: srun inside a SLURM job, else ssh")
    parser.add_argument("--repo_dir", default=REPO, help="checkout directory on every host")
    parser.add_argument("--python", default=".venv/bin/python", help="interpreter on the hosts")
    parser.add_argument("--setup", choices=("none", "pip"), default="none",
                        help="pip: install into REPO_DIR/.venv on every host first (README's GPU install)")
    parser.add_argument("--cuda", choices=("12", "13"), default="12", help="with --setup=pip: the CUDA major "
                        "version of the jax wheels (13 needs an NVIDIA driver >= 580)")
    parser.add_argument("--base_python", default="python3", help="with --setup=pip: the Python (>= 3.11) "
                        "that makes the venv")
    script_args.add_command_flags(parser, "after --: launch/train.py --config=... --workdir=...")
    args = parser.parse_args(argv)
    script_args.check_command_flags(parser, args)
    if args.hosts:
        args.hosts = [h for h in args.hosts.split(",") if h]
    elif environ.get("SLURM_JOB_NODELIST"):
        args.hosts = expand_nodelist(environ["SLURM_JOB_NODELIST"])
    else:
        parser.error("--hosts is empty and SLURM_JOB_NODELIST is not set")
    args.launcher = args.launcher or ("srun" if environ.get("SLURM_JOB_ID") else "ssh")
    if args.gpus_per_host < 1:
        parser.error(f"--gpus_per_host={args.gpus_per_host} must be positive")
    return args


def _base(args) -> list[str]:
    return script_args.with_interpreter(list(args.command), args.python)


def _env(args, extra=()) -> str:
    pairs = [p.partition("=") for p in list(args.env) + list(extra)]
    return "".join(f"{k}={shlex.quote(v)} " for k, _, v in pairs)


def num_processes(args) -> int:
    return len(args.hosts) * (args.gpus_per_host if args.process_per == "gpu" else 1)


def _visible(args, local) -> str:
    """The GPUs one process drives: all gpus_per_host of its host, or just its own."""
    return str(local) if args.process_per == "gpu" else ",".join(map(str, range(args.gpus_per_host)))


def _flags(args, process_id: str) -> str:
    return (f"--coordinator_address={args.hosts[0]}:{args.port} --num_processes={num_processes(args)} "
            f"--process_id={process_id}")


def ssh_commands(args) -> list[list[str]]:
    """One ssh command per host."""
    per_host = args.gpus_per_host if args.process_per == "gpu" else 1
    out = []
    for h, host in enumerate(args.hosts):
        lines = []
        for local in range(per_host):
            extra = [f"CUDA_VISIBLE_DEVICES={_visible(args, local)}"]
            lines.append(f"{_env(args, extra)}{shlex.join(_base(args))} {_flags(args, str(h * per_host + local))}")
        body = lines[0] if per_host == 1 else " & ".join(lines) + " & wait"
        out.append(["ssh", host, f"cd {shlex.quote(args.repo_dir)} && {body}"])
    return out


def srun_command(args) -> list[str]:
    per_host = args.gpus_per_host if args.process_per == "gpu" else 1
    gpu = f"CUDA_VISIBLE_DEVICES={_visible(args, '$SLURM_LOCALID')} "
    command = f"{shlex.join(_base(args))} {_flags(args, '$SLURM_PROCID')}"
    inner = f"cd {shlex.quote(args.repo_dir)} && {gpu}{_env(args)}{command}"
    return ["srun", f"--nodes={len(args.hosts)}", f"--ntasks-per-node={per_host}", f"--nodelist={','.join(args.hosts)}",
            "bash", "-c", inner]


def setup_commands(args) -> list[list[str]]:
    """--setup=pip: README's GPU install in --repo_dir, on one host after another."""
    if args.setup == "none":
        return []
    install = " && ".join([f"cd {shlex.quote(args.repo_dir)}",
                           *script_args.install_lines("gpu" if args.cuda == "12" else "gpu-cuda13", args.base_python)])
    if args.launcher == "srun":
        return [["srun", "--nodes=1", "--ntasks=1", f"--nodelist={host}", "bash", "-c", install] for host in args.hosts]
    return [["ssh", host, install] for host in args.hosts]


def main(argv=None, environ=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    setup = setup_commands(args)
    cmds = [srun_command(args)] if args.launcher == "srun" else ssh_commands(args)
    for cmd in setup + cmds:
        print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    for cmd in setup:
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"gpu_cluster: setup failed with exit status {rc}: {shlex.join(cmd)}", file=sys.stderr)
            return rc
    procs = [subprocess.Popen(cmd) for cmd in cmds]
    while any(p.poll() is None for p in procs):
        if any(p.returncode for p in procs):  # one host failed: the others would wait on it forever
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        time.sleep(1)
    codes = [p.returncode for p in procs]
    failed = [(shlex.join(c[:2]), rc) for c, rc in zip(cmds, codes) if rc]
    for name, rc in failed:
        print(f"gpu_cluster: {name} exited with status {rc}", file=sys.stderr)
    return failed[0][1] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
