"""The `--config=FILE[:ARG] [--config.KEY=VALUE ...]` flag of the launch scripts.

  CONFIG = cli.define_config("e.g. configs/paper.py:stage1")
  app.run(main, flags_parser=cli.parse)      # in main: config = cli.checked(CONFIG.value)

ml_collections reports an override of a key the config lacks as a bare KeyError of its last name;
`parse` names the whole key instead. `checked` runs check.check once, at start-up.
"""
import difflib
import importlib.util
import os
import re
from typing import Optional

import ml_collections
from absl import flags
from ml_collections import config_flags

from xformer_jax.configs import check

NAME = "config"


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
    """absl's flag parser for app.run(flags_parser=...): an override of an unknown key exits naming it."""
    try:
        return flag_values(argv)
    except (KeyError, AttributeError):
        spec = next((arg.split("=", 1)[1] for arg in argv if re.match(rf"^-{{1,2}}{NAME}=", arg)), None)
        if spec is None:
            raise
        config = load_file(spec)
        problems = [p for p in (unknown_override(config, key) for key in overrides(argv)) if p]
        if not problems:
            raise
        raise SystemExit("FATAL Flags parsing error: " + "; ".join(problems)) from None


def checked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` once check.check passes; otherwise the script exits with its message, which names the key."""
    try:
        check.check(config)
    except ValueError as e:
        raise SystemExit(f"FATAL config error: {e}") from None
    return config
