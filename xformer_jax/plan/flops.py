"""Matmul FLOPs of a traced function, counted on its jaxpr (what the model asks for, not what a compiler
reports): dot_general and convolutions, scans times their length, shard_map bodies times their devices.

Why count: XLA:GPU's deviceless compile has no cost analysis, XLA:TPU's and XLA:CPU's count a while loop's
body once, and every backend's count changes with its fusions. Elementwise work (softmax, norms, GELU) is
left out: a few percent of a transformer's FLOPs, and never on the matrix units the peak refers to.
"""
import math

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
    return 2.0 * math.prod(lhs[d] for d in (*lhs_contract, *lhs_batch)) * lhs_free * rhs_free


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial) positions
    per_output = math.prod(kernel[d] for d in spec[1:])  # in features (per group) x kernel window
    return 2.0 * math.prod(out) * per_output


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":  # the costliest branch
            total += max((jaxpr_flops(b.jaxpr) for b in eqn.params["branches"]), default=0.0)
        else:
            inner = sum(jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            if name == "scan":
                inner *= eqn.params["length"]
            elif name == "shard_map":
                inner *= eqn.params["mesh"].size
            total += inner
    return total


def matmul_flops(fn, *args) -> float:
    """Global matmul FLOPs of one call of `fn(*args)` (args may be ShapeDtypeStructs)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
