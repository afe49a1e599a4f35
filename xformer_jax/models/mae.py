"""MAE ViT (HF `ViTMAEModel` / `ViTMAEForPreTraining`): random masking, encoder, decoder, patchify.

Masking follows MAE exactly (its models_mae.random_masking): ids_shuffle = argsort(noise), keep the first
int(L * (1 - ratio)), ids_restore = argsort(ids_shuffle), mask 1 = removed. The noise comes from an
explicit PRNG key or is given, so a run is reproducible and parity with PyTorch can be checked.
Even at ratio 0 the kept tokens come out shuffled unless the noise is monotone: `identity_noise`
gives the unshuffled order, which is what inference wants.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xformer_jax.models import layers


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    dtype: Any = jnp.float32
    remat: layers.Remat = False  # or a policy name (layers.REMAT_POLICIES)
    scan_layers: bool = False  # encoder and decoder blocks as one lax.scan each (layers.BlockStack)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio {self.mask_ratio} must be in [0, 1)")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.num_channels


def sincos_position_embedding(width: int, grid_size: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table with a zero CLS row: (1 + grid**2, width).

    The first half of each row encodes the column (w) and the second half the row (h), which is the
    layout the released MAE checkpoints were trained with.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")

    def encode(positions):
        freqs = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
        angles = np.outer(positions.reshape(-1), freqs)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64),
                             indexing="ij")
    table = np.concatenate([encode(cols), encode(rows)], axis=1)
    return np.concatenate([np.zeros((1, width)), table], axis=0).astype(np.float32)


def constant_init(table: np.ndarray, axes):
    return nn.with_logical_partitioning(lambda *_: jnp.asarray(table), axes)


def identity_noise(batch: int, num_patches: int):
    """Monotone noise: keeps every patch in its original order (use with mask_ratio 0)."""
    return jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.float32), (batch, num_patches))


def random_masking(tokens, noise, mask_ratio: float):
    """Keep the int(L * (1 - mask_ratio)) tokens with the smallest noise.

    Returns (kept tokens, mask with 1 = removed, ids_restore), all as in MAE / HF ViTMAE.
    """
    batch, length, width = tokens.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = jnp.argsort(noise, axis=1)
    ids_restore = jnp.argsort(ids_shuffle, axis=1)
    kept = jnp.take_along_axis(tokens, ids_shuffle[:, :len_keep, None], axis=1)
    mask_shuffled = jnp.concatenate(
        [jnp.zeros((batch, len_keep)), jnp.ones((batch, length - len_keep))], axis=1)
    mask = jnp.take_along_axis(mask_shuffled, ids_restore, axis=1)
    return kept, mask, ids_restore


def patchify(pixel_values_nchw, patch_size: int):
    """(B, C, H, W) -> (B, patches, p*p*C), each patch vector ordered (row, col, channel)."""
    b, c, h, w = pixel_values_nchw.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not divisible into {patch_size}-pixel patches")
    x = pixel_values_nchw.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    x = jnp.transpose(x, (0, 2, 4, 3, 5, 1))
    return x.reshape(b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c)


def unpatchify(patches, patch_size: int, num_channels: int = 3, height: Optional[int] = None):
    """The inverse of patchify: (B, patches, p*p*C) -> (B, C, H, W); square images unless height given."""
    b, n, _ = patches.shape
    grid_h = (height // patch_size) if height else int(round(n ** 0.5))
    grid_w = n // grid_h
    if grid_h * grid_w != n:
        raise ValueError(f"{n} patches do not tile a {grid_h}-row grid")
    x = patches.reshape(b, grid_h, grid_w, patch_size, patch_size, num_channels)
    x = jnp.transpose(x, (0, 5, 1, 3, 2, 4))
    return x.reshape(b, num_channels, grid_h * patch_size, grid_w * patch_size)


def reconstruction_loss(pred, pixel_values_nchw, mask, patch_size: int, norm_pix_loss: bool):
    """Per-patch pixel MSE averaged over masked patches (mask 1 = removed), in float32.

    With norm_pix_loss the target patch is normalised with its mean and unbiased variance (ddof=1),
    as MAE and HF do; match it to the checkpoint (the *_visualize_* MAE weights used raw pixels).
    """
    target = patchify(pixel_values_nchw.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masking_noise(batch: int, num_patches: int, noise=None, mask_rng=None):
    """The noise that drives masking: given, or uniform from an explicit key."""
    if noise is not None:
        if noise.shape != (batch, num_patches):
            raise ValueError(f"noise shape {noise.shape} != (batch, num_patches) = {(batch, num_patches)}")
        return noise
    if mask_rng is None:
        raise ValueError("MAE masking needs `noise` or `mask_rng` (an explicit PRNG key)")
    return jax.random.uniform(mask_rng, (batch, num_patches))


class MAEEncoder(nn.Module):
    """HF ViTMAEModel: patch embed + fixed positions, masking, CLS, blocks, final LayerNorm."""
    config: MAEConfig

    @nn.compact
    def __call__(self, pixel_values, noise=None, mask_rng=None, mask_ratio: Optional[float] = None,
                 output_hidden_states: bool = False):
        c = self.config
        ratio = c.mask_ratio if mask_ratio is None else mask_ratio
        pos = self.param("pos_embed", constant_init(sincos_position_embedding(c.hidden_size, c.grid_size),
                                                    (None, "embed")), None)
        cls_token = self.param("cls_token", layers.normal_init((None, "embed")), (1, c.hidden_size))
        x = layers.PatchEmbed(c.patch_size, c.hidden_size, True, c.dtype, name="patch_embed")(pixel_values)
        x = x + pos[1:].astype(x.dtype)
        noise = masking_noise(x.shape[0], x.shape[1], noise, mask_rng)
        x, mask, ids_restore = random_masking(x, noise, ratio)
        cls = jnp.broadcast_to((cls_token + pos[:1]).astype(x.dtype), (x.shape[0], 1, c.hidden_size))
        states = layers.BlockStack(c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                                   c.layer_norm_eps, dtype=c.dtype, remat=c.remat, scan_layers=c.scan_layers,
                                   name="blocks")(jnp.concatenate([cls, x], axis=1), all_states=output_hidden_states)
        out = {"last_hidden_state": layers.layer_norm(c.layer_norm_eps, "norm")(states[-1]).astype(c.dtype),
               "mask": mask, "ids_restore": ids_restore}
        if output_hidden_states:
            out["hidden_states"] = tuple(states)
        return out


class MAEDecoder(nn.Module):
    """HF ViTMAEDecoder: embed, append mask tokens, unshuffle, positions, blocks, norm, pixel head."""
    config: MAEConfig

    @nn.compact
    def __call__(self, latent, ids_restore):
        c = self.config
        width = c.decoder_hidden_size
        pos = self.param("pos_embed", constant_init(sincos_position_embedding(width, c.grid_size),
                                                    (None, "embed")), None)
        mask_token = self.param("mask_token", layers.normal_init((None, "embed")), (1, width))
        x = layers.dense(width, ("embed", "mlp"), "embed", c.dtype)(latent)
        batch, num_patches = ids_restore.shape
        fill = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, num_patches + 1 - x.shape[1], width))
        patches = jnp.concatenate([x[:, 1:], fill], axis=1)
        patches = jnp.take_along_axis(patches, ids_restore[:, :, None], axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1) + pos.astype(x.dtype)
        x = layers.BlockStack(c.decoder_num_hidden_layers, c.decoder_num_attention_heads,
                              c.decoder_intermediate_size, c.hidden_act, c.layer_norm_eps, dtype=c.dtype,
                              remat=c.remat, scan_layers=c.scan_layers, name="blocks")(x, all_states=False)[-1]
        x = layers.layer_norm(c.layer_norm_eps, "norm")(x).astype(c.dtype)
        logits = layers.dense(c.patch_dim, ("mlp", "embed"), "pred", c.dtype)(x)
        return logits[:, 1:].astype(jnp.float32)


class MAEForPreTraining(nn.Module):
    """HF ViTMAEForPreTraining: encoder + decoder + the masked reconstruction loss."""
    config: MAEConfig

    def setup(self):
        self.encoder = MAEEncoder(self.config)
        self.decoder = MAEDecoder(self.config)

    def __call__(self, pixel_values, noise=None, mask_rng=None, mask_ratio: Optional[float] = None,
                 output_hidden_states: bool = False):
        enc = self.encoder(pixel_values, noise, mask_rng, mask_ratio, output_hidden_states)
        logits = self.decoder(enc["last_hidden_state"], enc["ids_restore"])
        loss = reconstruction_loss(logits, pixel_values, enc["mask"], self.config.patch_size,
                                   self.config.norm_pix_loss)
        out = {"loss": loss, "logits": logits, "mask": enc["mask"], "ids_restore": enc["ids_restore"]}
        if output_hidden_states:
            out["hidden_states"] = enc["hidden_states"]
        return out

    def encode(self, pixel_values, noise=None, mask_rng=None, mask_ratio: Optional[float] = None):
        return self.encoder(pixel_values, noise, mask_rng, mask_ratio)

    def decode(self, latent, ids_restore):
        return self.decoder(latent, ids_restore)


def config_from_hf(hf: dict, **overrides) -> MAEConfig:
    """An MAEConfig from an HF ViTMAEConfig dict (config.json)."""
    names = [f.name for f in dataclasses.fields(MAEConfig) if f.name not in ("dtype", "remat", "scan_layers")]
    fields = {k: hf[k] for k in names if k in hf}
    fields.update(overrides)
    return MAEConfig(**fields)
