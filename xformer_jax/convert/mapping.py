"""The generic HF -> Flax rename/transpose engine; each model family supplies only a rename table.

A table is a list of (hf_module, flax_module) templates in which `{i}` stands for a layer index,
e.g. ("encoder.layers.{i}.self_attn.q_proj", "blocks/block_{i}/attn/query"). A checkpoint key is
split into its module and leaf ("weight" / "bias"); the leaf becomes `kernel` (Linear: transposed;
Conv: OIHW -> HWIO), `scale` (LayerNorm) or `embedding` (Embedding) according to what the Flax module
holds there. Keys that name a bare parameter (e.g. "embeddings.class_embedding") match a template
whole, and are tried first. Leading singleton dimensions may differ (HF stores the CLS token as (1, 1, D), we keep (1, D));
any other shape difference, any key without a rule, and any Flax param left unfilled is an error
that names the file, the key and both shapes.

`flax_to_hf` runs the same tables backwards for export (kernels transposed back, leading singleton
dims restored), so each family's names live in one place.
"""
import re
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from flax import traverse_util

Table = Sequence[tuple[str, str]]
MAX_LISTED = 25


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model built from its config."""


def _compile(table: Table) -> list[tuple[re.Pattern, str]]:
    compiled = []
    for hf, flax in table:
        pattern = re.escape(hf).replace(r"\{i\}", r"(?P<i>\d+)")
        compiled.append((re.compile(pattern + r"\Z"), flax))
    return compiled


def _lookup(compiled, name: str):
    for pattern, flax in compiled:
        match = pattern.match(name)
        if match:
            return flax.replace("{i}", match.groupdict().get("i") or "")
    return None


def _leaf_name(module_path: str, leaf: str, target: Mapping[str, tuple]) -> str:
    if leaf == "bias":
        return "bias"
    for candidate in ("kernel", "scale", "embedding"):
        if f"{module_path}/{candidate}" in target:
            return candidate
    return "kernel"


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    return array


def _fit_singletons(array: np.ndarray, shape: tuple) -> np.ndarray:
    """Reshape when only leading size-1 dimensions differ; otherwise return unchanged."""
    def core(s):
        s = list(s)
        while s and s[0] == 1:
            s.pop(0)
        return s
    if array.shape != tuple(shape) and core(array.shape) == core(shape):
        return array.reshape(shape)
    return array


def hf_to_flax(tensors: Mapping[str, np.ndarray], origin: Mapping[str, str], table: Table,
               target_shapes: Mapping[str, tuple], ignore: Iterable[str] = ()) -> dict:
    """Map flat HF tensors onto a nested Flax params dict whose flat '/'-joined shapes are given.

    `ignore` lists regexes of checkpoint keys that are known not to belong to this model (for
    example the text tower of a CLIPModel when only its vision tower is built).
    """
    compiled = _compile(table)
    ignored = [re.compile(p) for p in ignore]
    flat, problems = {}, []
    for name, array in tensors.items():
        where = origin.get(name, "checkpoint")
        module, _, leaf = name.rpartition(".")
        path = _lookup(compiled, name)
        if path is None and leaf in ("weight", "bias"):
            module_path = _lookup(compiled, module)
            if module_path is not None:
                leaf_name = _leaf_name(module_path, leaf, target_shapes)
                path, array = f"{module_path}/{leaf_name}", _to_flax_layout(array, leaf_name)
        if path is None:
            if not any(p.match(name) for p in ignored):
                problems.append(f"{where}: unexpected key {name!r} {tuple(array.shape)} (no rule maps it)")
            continue
        if path not in target_shapes:
            problems.append(f"{where}: key {name!r} maps to {path!r}, which the model built from config.json "
                            "does not have")
            continue
        array = _fit_singletons(array, target_shapes[path])
        if array.shape != tuple(target_shapes[path]):
            problems.append(f"{where}: key {name!r} has shape {tuple(array.shape)} (in Flax layout) but the model "
                            f"built from config.json expects {tuple(target_shapes[path])} at {path!r}")
            continue
        flat[path] = array
    for path in sorted(set(target_shapes) - set(flat)):
        problems.append(f"missing from checkpoint: Flax param {path!r} {tuple(target_shapes[path])}")
    if problems:
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more")
        raise CheckpointMismatch(f"{len(problems)} problem(s) loading the checkpoint:\n  " + "\n  ".join(shown))
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flat_shapes(params) -> dict[str, tuple]:
    """'/'-joined path -> shape for a (possibly abstract) params tree."""
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}


# ------------------------------------------------------------------------------------------------
# The inverse: Flax params -> HF names and layouts, from the same tables.
# ------------------------------------------------------------------------------------------------

def _to_hf_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of `_to_flax_layout`: Linear (in, out) -> (out, in), Conv HWIO -> OIHW."""
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    return array


def _with_rank(array: np.ndarray, ndim: int, name: str) -> np.ndarray:
    """Add or drop leading size-1 dims to reach `ndim` (HF's (1, 1, D) CLS token from our (1, D))."""
    shape = list(array.shape)
    while len(shape) > ndim and shape[0] == 1:
        shape.pop(0)
    shape = [1] * max(ndim - len(shape), 0) + shape
    if len(shape) != ndim:
        raise ValueError(f"{name}: cannot give shape {array.shape} rank {ndim}")
    return array.reshape(shape)


def flax_to_hf(flat: Mapping[str, np.ndarray], table: Table, ndims: Optional[Mapping[str, int]] = None,
               drop: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """'/'-joined Flax params -> {HF name: array in HF layout}, inverting an import table.

    A rule whose Flax side is a whole param path names a bare HF parameter; otherwise the rule names
    a module and the leaf becomes `weight` (kernel: transposed back; scale; embedding) or `bias`.
    The first rule that matches wins, so a table that reads several HF spellings writes the one it
    lists first. `ndims` gives the HF rank of bare params stored with extra (or fewer) leading
    singleton dims; `drop` lists regexes of Flax paths knowingly not exported. Any other param
    without a rule, and two params landing on one name, raise CheckpointMismatch.
    """
    compiled = _compile([(flax, hf) for hf, flax in table])  # match Flax paths, name HF keys
    dropped = [re.compile(p) for p in drop]
    ndims = dict(ndims or {})
    out, source, problems = {}, {}, []
    for path in sorted(flat):
        array = np.asarray(flat[path])
        if any(p.fullmatch(path) for p in dropped):
            continue
        name = _lookup(compiled, path)
        if name is None:
            module, _, leaf = path.rpartition("/")
            hf_module = _lookup(compiled, module) if module else None
            if hf_module is None:
                problems.append(f"Flax param {path!r} {tuple(array.shape)} has no export rule")
                continue
            name = f"{hf_module}.{'bias' if leaf == 'bias' else 'weight'}"
            array = _to_hf_layout(array, leaf)
        if name in ndims:
            array = _with_rank(array, ndims[name], name)
        if name in out:
            problems.append(f"Flax params {source[name]!r} and {path!r} both export as {name!r}")
            continue
        out[name], source[name] = array, path
    if problems:
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more")
        raise CheckpointMismatch(f"{len(problems)} problem(s) exporting the params:\n  " + "\n  ".join(shown))
    return out
