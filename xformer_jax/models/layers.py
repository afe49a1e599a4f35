"""Shared building blocks: dense / norm layers that carry logical axis names, attention, ViT blocks.

Model code names logical axes only ("embed", "mlp", "joined_kv", "vocab", ...); the mapping of those
names onto the mesh axes (data, fsdp, tensor) lives in config (see `xformer_jax.partitioning`).
Params are stored in float32; `dtype` is the compute dtype. Softmax and norms run in float32.
"""
from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype
INIT_STD = 0.02


def normal_init(axes: Sequence[Optional[str]], std: float = INIT_STD):
    return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(axes))


def zeros_init(axes: Sequence[Optional[str]]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def dense(features: int, axes: Sequence[Optional[str]], name: str, dtype: Dtype = jnp.float32,
          use_bias: bool = True, init_std: float = INIT_STD) -> nn.Dense:
    """A Dense layer whose kernel is (in, out) with the given logical axes, initialised N(0, init_std)."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=normal_init(axes, init_std), bias_init=zeros_init(axes[-1:]))


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """LayerNorm computed in float32 whatever the compute dtype (bf16 statistics drift)."""
    return nn.LayerNorm(
        epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=zeros_init(("norm",)))


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x):
    """PyTorch's exact GELU, 0.5 x (1 + erf(x / sqrt 2)): the same formula as the reference, and XLA:CPU
    runs erf far faster than the erfc that jax.nn.gelu(approximate=False) uses."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable] = {
    "gelu": gelu_exact,
    "quick_gelu": quick_gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def split_heads(x, num_heads: int):
    batch, length, width = x.shape
    return x.reshape(batch, length, num_heads, width // num_heads)


def dropout(module: nn.Module, rate: float, x):
    """Dropout inside `module`'s compact call, on exactly when the caller passed a "dropout" rng to
    apply: the train step does; evaluation, generation, init and the parity tests do not."""
    if rate == 0.0 or not module.has_rng("dropout"):
        return x
    return nn.Dropout(rate, deterministic=False)(x)


def attend(query, key, value, bias=None, probs_dropout: Optional[Callable] = None):
    """Scaled dot-product attention over (batch, length, heads, head_dim) tensors.

    `bias` is additive (broadcastable to batch, heads, q_len, k_len). The softmax runs in float32.
    `probs_dropout` (BERT's attention-probability dropout) is applied to the probabilities.
    """
    scale = query.shape[-1] ** -0.5
    # Heads-major batched matmuls: XLA:CPU runs these ~2.5x faster than the equivalent einsums
    # over the (batch, length, heads, head_dim) layout.
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (query * jnp.asarray(scale, query.dtype), key, value))
    scores = jnp.matmul(q, jnp.swapaxes(k, -1, -2)).astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    if probs_dropout is not None:
        probs = probs_dropout(probs)
    out = jnp.swapaxes(jnp.matmul(probs, v), 1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


Remat = Union[bool, str]  # False, True (= "nothing_saveable") or one of REMAT_POLICIES
# jax.checkpoint_policies by name, for `remat` config values: what the backward pass may keep instead
# of recomputing. nothing_saveable keeps only each layer's input; the dots policies keep matmul outputs
# (those without batch dimensions: the projections, not attention's batched matmuls).
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable", "everything_saveable")


def checkpoint_policy(remat: Remat) -> Optional[Callable]:
    """The jax.checkpoint policy a `remat` config value names (True: nothing_saveable)."""
    if remat is True:
        remat = "nothing_saveable"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is neither True / False nor one of {REMAT_POLICIES}")
    return getattr(jax.checkpoint_policies, remat)


def remat_module(cls, remat: Remat, **kwargs):
    """`cls`, wrapped in nn.remat with the named policy when `remat` is set."""
    return nn.remat(cls, policy=checkpoint_policy(remat), **kwargs) if remat else cls


def scan_blocks(module: nn.Module, names: Sequence[str], template: nn.Module, x, *shared, remat: Remat = False,
                all_states: bool = False):
    """Applies `module`'s children `names` (identical layers, params stored per layer) in order as one
    `lax.scan` over their stacked params: XLA compiles one layer instead of len(names), which is what
    keeps compiles of 30-40 layer towers and LLMs fast. `template` is an unbound layer of the same
    kind; each takes (x, *shared) and returns x (or a tuple whose first item is x).

    Returns (last output, stacked outputs of every layer or None). Stacking the params copies them once
    per step (a tower's params, sharded like the layers); gradients reach the per-layer params through
    the stack. Not for init: the per-layer params must exist already.
    """
    params = module.variables["params"]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *(params[name] for name in names))

    def body(carry, layer_params):
        out = template.apply({"params": layer_params}, carry, *shared)
        out = out[0] if isinstance(out, tuple) else out
        return out, (out if all_states else None)

    if remat:
        body = jax.checkpoint(body, policy=checkpoint_policy(remat), prevent_cse=False)
    return jax.lax.scan(body, x, stacked)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate or fused (EVA style) q/k/v projections."""
    num_heads: int
    fused_qkv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, bias=None):
        width = x.shape[-1]
        if self.fused_qkv:
            qkv = dense(3 * width, ("embed", "joined_kv"), "qkv", self.dtype)(x)
            q, k, v = jnp.split(qkv, 3, axis=-1)
        else:
            q, k, v = (dense(width, ("embed", "joined_kv"), n, self.dtype)(x) for n in ("query", "key", "value"))
        heads = [split_heads(t, self.num_heads) for t in (q, k, v)]
        out = attend(*heads, bias=bias)
        return dense(width, ("joined_kv", "embed"), "out", self.dtype)(out)


class Mlp(nn.Module):
    hidden: int
    act: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = activation(self.act)(dense(self.hidden, ("embed", "mlp"), "fc1", self.dtype)(x))
        return dense(width, ("mlp", "embed"), "fc2", self.dtype)(h)


class PreLNBlock(nn.Module):
    """The pre-LayerNorm transformer block shared by CLIP, EVA and MAE (encoder and decoder)."""
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    eps: float = 1e-6
    fused_qkv: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = layer_norm(self.eps, "norm1")(x).astype(self.dtype)
        x = x + SelfAttention(self.num_heads, self.fused_qkv, self.dtype, name="attn")(h)
        h = layer_norm(self.eps, "norm2")(x).astype(self.dtype)
        return x + Mlp(self.mlp_dim, self.act, self.dtype, name="mlp")(h)


class BlockStack(nn.Module):
    """`depth` PreLNBlocks named block_0..; returns every intermediate output (input first).

    `scan_layers` runs the blocks as one `lax.scan` (`scan_blocks`): same params, same numbers, one
    compiled block instead of `depth`. `all_states=False` lets the scan skip stacking the intermediates
    when the caller reads only the last one."""
    depth: int
    num_heads: int
    mlp_dim: int
    act: str = "gelu"
    eps: float = 1e-6
    fused_qkv: bool = False
    dtype: Dtype = jnp.float32
    remat: Remat = False
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, stop_after: Optional[int] = None, all_states: bool = True):
        args = (self.num_heads, self.mlp_dim, self.act, self.eps, self.fused_qkv, self.dtype)
        names = [f"block_{i}" for i in range(self.depth if stop_after is None else stop_after)]
        if self.scan_layers and names and not self.is_initializing():
            last, states = scan_blocks(self, names, PreLNBlock(*args, parent=None), x, remat=self.remat,
                                       all_states=all_states)
            return [x, *states] if all_states else [x, last]
        block_cls = remat_module(PreLNBlock, self.remat)
        states = [x]
        for name in names:
            x = block_cls(*args, name=name)(x)
            states.append(x)
        return states


class PatchEmbed(nn.Module):
    """Conv patch embedding on NCHW pixels (the HF layout); returns (batch, patches, width)."""
    patch_size: int
    width: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values_nchw):
        p = self.patch_size
        x = jnp.transpose(pixel_values_nchw, (0, 2, 3, 1)).astype(self.dtype)
        y = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=self.use_bias,
                    dtype=self.dtype, param_dtype=jnp.float32, name="proj",
                    kernel_init=normal_init((None, None, None, "embed")), bias_init=zeros_init(("embed",)))(x)
        return y.reshape(y.shape[0], -1, y.shape[-1])
