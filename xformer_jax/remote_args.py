"""Flags the multi-host launchers (tpu_vm.py, gpu_cluster.py) share: --env, --dry_run and the command."""
import argparse


def add_command_flags(parser: argparse.ArgumentParser, command_help: str) -> None:
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for every process (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=command_help)


def check_command_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Drops the `--` before the command; fails on an empty command or an --env that is not KEY=VALUE."""
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("no command given: add `-- launch/train.py --config=... --workdir=...`")
    for pair in args.env:
        if "=" not in pair:
            parser.error(f"--env={pair!r} is not KEY=VALUE")
