"""A config against the base config's keys and types: one check at start-up, naming the key.

Every key must be one the base config has (xformer_jax/configs/common.py; config.model.llm: the keys of its
`kind`'s dataclass), and every value the type the key holds: an int where a float is expected is
fine, as are a list for a tuple and None (unset) anywhere.
"""
import difflib

import ml_collections

from xformer_jax.configs import common
from xformer_jax.factory import sections


def check(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first key of `config` the base lacks or whose value has another type."""
    base = common.base_config()
    llm = config.get("model", {}).get("llm", None)
    kind = llm.get("kind", "opt") if isinstance(llm, ml_collections.ConfigDict) else "opt"
    base.model.llm = sections.llm_defaults(kind)
    try:
        _check_section(config, base, "config")
    except ValueError as e:
        if not str(e).startswith("config.model.llm."):
            raise
        raise ValueError(f"{e} (config.model.llm holds the fields of {sections.LLM_KINDS[kind].__name__}, "
                         f"as config.model.llm.kind={kind!r})") from None


def _check_section(section: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, key: str) -> None:
    for name in section.keys():
        path = f"{key}.{name}"
        if name not in schema:
            close = difflib.get_close_matches(name, list(schema.keys()), n=1)
            hint = f"; did you mean {key}.{close[0]}?" if close else f"; {key} has {sorted(schema.keys())}"
            raise ValueError(f"{path} is not a config key{hint}")
        value, expected = section[name], schema[name]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"{path}={value!r}: {path} is a section of keys, not a value")
            _check_section(value, expected, path)
        elif not _fits(value, schema.get_type(name)):
            raise ValueError(f"{path}={value!r} is a {type(value).__name__}; {path} holds a {_name(schema, name)}")


def _fits(value, kind) -> bool:
    if value is None or kind in (object, type(None)):
        return True
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (tuple, list):
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


def _name(schema: ml_collections.ConfigDict, name: str) -> str:
    return schema.get_type(name).__name__
