"""Run a command on every worker of a Cloud TPU VM (single host or pod slice) through gcloud.

  python launch/tpu_vm.py --tpu=my-v5p-64 --zone=us-east5-a [--project=P] [--dry_run] -- \
      launch/train.py --config=configs/paper.py:stage1 --workdir=gs://bucket/xformer/stage1

Steps (each one `gcloud compute tpus tpu-vm ...` command; --dry_run prints them and runs nothing):
  1. copy:  a tarball of this checkout's files (`git ls-files`: tracked + untracked-not-ignored) is
            copied to every worker and unpacked into --remote_dir; or, with --repo=URL, every worker
            clones (or fast-forwards) that repository there.       (--copy=none skips this step)
  2. setup: README's TPU install on every worker (`script_args.install_lines("tpu")`: a
            venv, `pip install -c constraints.txt -e '.[tpu,gcs]'` and the Q-Former vocab package; no
            torch, no test extras).                                  (--setup=none skips this step)
  3. run:   `cd REMOTE_DIR && .venv/bin/python COMMAND` on all workers at once (`--worker=all`).
            launch/train.py calls jax.distributed.initialize() itself on a TPU pod (it sees
            TPU_WORKER_HOSTNAMES), so the command is the same on every worker. --background wraps it
            in nohup (output to --log on each worker), so a dropped ssh session does not stop training.
Weights and data are not copied: put them in a bucket (gs:// paths work for --workdir, the data and
the checkpoints) or on a disk every worker mounts, and point the config at them.
"""
import argparse
import os
import shlex
import subprocess
import sys

import script_args  # launch/script_args.py, beside this script


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = "/tmp/xformer_jax_src.tgz"


def parse(argv):
    parser = script_args.ArgumentParser(description=__doc__)
    parser.add_argument("--tpu", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="", help="GCP project (default: gcloud's configured one)")
    parser.add_argument("--remote_dir", default="xformer-jax", help="checkout directory on every worker "
                        "(relative to the home directory)")
    parser.add_argument("--copy", choices=("local", "none"), default="local",
                        help="local: copy this checkout's files; none: the code is already there")
    parser.add_argument("--repo", default="", help="git URL to clone on every worker instead of copying")
    parser.add_argument("--branch", default="", help="with --repo: branch or tag to check out")
    parser.add_argument("--setup", choices=("pip", "none"), default="pip",
                        help="pip: install into REMOTE_DIR/.venv on every worker (README's TPU install)")
    parser.add_argument("--base_python", default="python3", help="with --setup=pip: the Python (>= 3.11) "
                        "that makes the venv, e.g. python3.11 on an image whose python3 is older")
    parser.add_argument("--python", default=".venv/bin/python", help="interpreter on the workers")
    parser.add_argument("--background", action="store_true", help="run under nohup, output to --log")
    parser.add_argument("--log", default="train.log", help="with --background: log file in --remote_dir")
    script_args.add_command_flags(parser, "after --: the command, e.g. launch/train.py --config=... --workdir=...")
    args = parser.parse_args(argv)
    script_args.check_command_flags(parser, args)
    return args


def _gcloud(args, verb: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb]


def _where(args) -> list[str]:
    where = [f"--zone={args.zone}", "--worker=all"]
    return where + ([f"--project={args.project}"] if args.project else [])


def ssh(args, remote: str) -> list[str]:
    return _gcloud(args, "ssh") + [args.tpu] + _where(args) + [f"--command={remote}"]


def remote_command(args) -> str:
    """The shell line every worker runs for the user's command."""
    command = script_args.with_interpreter(list(args.command), args.python)
    env = [f"{k}={shlex.quote(v)}" for k, _, v in (pair.partition("=") for pair in args.env)]
    line = " ".join(env + [shlex.join(command)])
    if args.background:
        line = f"nohup sh -c {shlex.quote(line)} > {shlex.quote(args.log)} 2>&1 &"
    return f"cd {shlex.quote(args.remote_dir)} && {line}"


def commands(args) -> list[list[str]]:
    """Every local command, in order (the first may be a local tarball step)."""
    out = []
    d = shlex.quote(args.remote_dir)
    if args.repo:
        branch = f" --branch {shlex.quote(args.branch)}" if args.branch else ""
        out.append(ssh(args, f"if [ -d {d}/.git ]; then git -C {d} pull --ff-only; "
                             f"else git clone{branch} {shlex.quote(args.repo)} {d}; fi"))
    elif args.copy == "local":
        out.append(["sh", "-c", f"cd {shlex.quote(REPO)} && git ls-files -co --exclude-standard -z | "
                                f"tar czf {TARBALL} --null -T -"])
        out.append(_gcloud(args, "scp") + [TARBALL, f"{args.tpu}:/tmp/"] + _where(args))
        out.append(ssh(args, f"mkdir -p {d} && tar xzf /tmp/{os.path.basename(TARBALL)} -C {d}"))
    if args.setup == "pip":
        out.append(ssh(args, " && ".join([f"cd {d}", *script_args.install_lines("tpu", args.base_python)])))
    out.append(ssh(args, remote_command(args)))
    return out


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    for cmd in commands(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.run(cmd).returncode
            if rc:
                print(f"tpu_vm: command failed with exit status {rc}: {shlex.join(cmd)}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
