"""Print a config with every key and its value, defaults included, checked against the base config.

  python -m xformer_jax.configs.show                                   # the base config (common.py)
  python -m xformer_jax.configs.show configs/paper.py:stage1 [--config.KEY=VALUE ...]

A model key's meaning is the comment on its field in the dataclass that factory/sections.py
maps it to; the other keys' are the comments in common.py and the default_*_config functions
it calls (data/config.py, train/optimizer.py, partitioning.py, train/checkpointing.py).
"""
import sys

import ml_collections
from absl import flags
from flax import traverse_util

from xformer_jax.configs import cli, common


def load(argv: list[str]) -> ml_collections.ConfigDict:
    """The config that argv names (FILE[:ARG] or --config=FILE[:ARG], then --config.KEY=VALUE ...),
    checked; the base config when it names none."""
    if len(argv) > 1 and not argv[1].startswith("-"):
        argv = [argv[0], f"--{cli.NAME}={argv[1]}", *argv[2:]]
    values = flags.FlagValues()
    holder = cli.define_config("e.g. configs/paper.py:stage1", values, argv)
    try:
        cli.parse(argv, values)
    except flags.Error as e:
        raise SystemExit(f"FATAL Flags parsing error: {e}") from None
    return cli.checked(holder.value if holder.value is not None else common.base_config())


def render(config: ml_collections.ConfigDict) -> str:
    """One `KEY = VALUE` line per key, KEY dotted as in --config.KEY=VALUE."""
    flat = traverse_util.flatten_dict(config.copy_and_resolve_references().to_dict(), sep=".")
    return "\n".join(f"{key} = {value!r}" for key, value in sorted(flat.items()))


if __name__ == "__main__":
    print(render(load(sys.argv)))
