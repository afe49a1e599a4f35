"""The `--config=FILE[:ARG] [--config.KEY=VALUE ...]` flag of the launch scripts, and how every launch
script answers a user's mistake: one line naming the flag, key or file (and the valid choices), never a
traceback.

  CONFIG = cli.define_config("e.g. configs/paper.py:stage1")
  app.run(main, flags_parser=cli.parse)      # in main: config = cli.checked(CONFIG.value)

ml_collections reports an override of a key the config lacks as a bare KeyError of its last name;
`parse` names the whole key instead, and turns absl's flag errors (a missing required flag, a value of
the wrong type), a config file that does not exist and a config variant its get_config refuses into
one line each. `--help` prints the script's docstring and its flags, --config among them, and exits 0.
`checked` runs check.check once, at start-up. The argparse scripts get the same from
launch/script_args.py's `ArgumentParser`.
"""
import difflib
import importlib.util
import os
import re
import sys
from typing import Optional

import ml_collections
from absl import flags
from ml_collections import config_flags

from xformer_jax.configs import check

NAME = "config"
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def define_config(example: str, flag_values: flags.FlagValues = flags.FLAGS, argv: Optional[list[str]] = None):
    """The --config flag in `flag_values`; its overrides are read from `argv` (default: sys.argv)."""
    return config_flags.DEFINE_config_file(NAME, None, f"Config file, {example}.", flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)


def overrides(argv: list[str]) -> list[str]:
    """The KEYs of every --config.KEY=VALUE in argv."""
    return [re.sub(r"^-{1,2}(no)?", "", arg).split("=", 1)[0].split(".", 1)[1]
            for arg in argv if re.match(rf"^-{{1,2}}(no)?{NAME}\.", arg)]


def load_file(spec: str) -> ml_collections.ConfigDict:
    """get_config(ARG) of the config file FILE[:ARG], as config_flags calls it."""
    path, colon, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"{NAME}_file", path)
    if module_spec is None or not os.path.isfile(path):
        raise SystemExit(f"--{NAME}={spec}: {path} is not a config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*((arg,) if colon else ()))


def unknown_override(config: ml_collections.ConfigDict, key: str) -> str:
    """'' if config has `key` (dotted), else a message naming it and the nearest key it has."""
    section, path = config, NAME
    for name in key.split("."):
        if not isinstance(section, ml_collections.ConfigDict) or name not in section:
            keys = list(section.keys()) if isinstance(section, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(name, keys, n=1)
            hint = f"; did you mean {path}.{close[0]}?" if close else ""
            return f"--{NAME}.{key}: {path} has no key {name!r}{hint}"
        section, path = section[name], f"{path}.{name}"
    return ""


def parse(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parser for app.run(flags_parser=...): --help prints the script's help and exits 0; every
    mistake in the flags exits with one line naming the flag, key or file."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(flag_values))
        raise SystemExit(0)
    spec = next((arg.split("=", 1)[1] for arg in argv if re.match(rf"^-{{1,2}}{NAME}=", arg)), None)
    if spec is not None and not os.path.isfile(spec.partition(":")[0]):
        raise SystemExit(f"FATAL --{NAME}={spec}: {spec.partition(':')[0]} is not a config file")
    try:
        return flag_values(argv)
    except (KeyError, AttributeError):
        if spec is None:
            raise
        config = load_file(spec)
        problems = [p for p in (unknown_override(config, key) for key in overrides(argv)) if p]
        if not problems:
            raise
        raise SystemExit("FATAL Flags parsing error: " + "; ".join(problems)) from None
    except flags.Error as e:
        raise SystemExit(f"FATAL Flags parsing error: {_flag_error(e, flag_values, spec)}") from None


def _flag_error(error: flags.Error, flag_values: flags.FlagValues, spec: Optional[str]) -> str:
    """absl's message in one line; a missing required flag as `--workdir is required (its help)`; an error
    raised by the config file's get_config (an unknown variant) as its own last line, without the traceback
    config_flags wraps it in."""
    if "Error whilst parsing config file" in str(error):
        last = re.sub(r"^[A-Za-z.]*(Error|Exception): ", "", str(error).strip().splitlines()[-1])
        return last if spec and last.startswith(spec) else f"--{NAME}={spec}: {last}"
    text = " ".join(str(error).split())
    missing = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
    if missing:
        name = missing.group(1)
        help_ = flag_values[name].help if name in flag_values else ""
        return f"--{name} is required" + (f" ({help_})" if help_ else "")
    return text


def help_text(flag_values: flags.FlagValues) -> str:
    """The running script's docstring, then each of its flags (--config included) with its help."""
    main = sys.modules.get("__main__")
    doc = (getattr(main, "__doc__", None) or "").strip()
    names = [f.name for f in flag_values.get_key_flags_for_module(sys.argv[0])] if sys.argv else []
    if NAME in flag_values and NAME not in names:
        names.insert(0, NAME)
    lines = [doc, "", "flags:"] if doc else ["flags:"]
    for name in names:
        flag = flag_values[name]
        default = "" if flag.default is None else f" (default: {flag.default})"
        lines.append(f"  --{name}: {flag.help}{default}")
    lines.append(f"  --{NAME}.KEY=VALUE: override one key of the config (python -m xformer_jax.configs.show lists them)")
    return "\n".join(lines)


def checked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` once check.check passes; otherwise the script exits with its message, which names the key."""
    try:
        check.check(config)
    except ValueError as e:
        raise SystemExit(f"FATAL config error: {e}") from None
    return config
