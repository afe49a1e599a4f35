"""X-Former / BLIP-2 in PyTorch, assembled from transformers' modules, reading launch/export.py's output.

Each transformers part is loaded with its own class's `from_pretrained(None, config=..., state_dict=...)`
from its slice of the checkpoint (so transformers' renames of older layouts, tied heads and dtypes
apply): the vision tower `vision_model.` (Blip2VisionModel or CLIPVisionModel, truncated to the blocks
the Q-Former reads), the Q-Former `qformer.` (Blip2QFormerModel), the MAE `mae.` (ViTMAEModel, or
ViTMAEForPreTraining when the decoder was exported) and the LLM `language_model.` (OPT / LLaMA). The
rest (query tokens, ln_vision, fusion blocks, projections, heads) are this module's own parameters,
the fusion blocks built from transformers' Q-Former attention / FFN modules.

The forward is the JAX model's inference path (models/xformer.py, models/stage2.py):
  * features = the tower's hidden state at the configured layer (the exported tower ends there), then
    ln_vision (an EVA tower's post_layernorm weights with the Q-Former's eps; a CLIP tower's own
    `ln_vision`);
  * the MAE encoder runs with identity noise, so at mask ratio 0 every patch stays in order (stage 2
    trained with reconstruction keeps the first patches at its ratio, as the JAX model does);
  * concat: MAE tokens projected to the tower width are appended to the tower features before ln_vision;
  * the Q-Former layers run one by one; after each cross-attention layer the per-layer fusions
    (early_xattn, xformer per_xattn_layer) rewrite the query positions; xformer after_qformer runs its
    dual cross-attention on the Q-Former output;
  * stage 2: inputs_embeds = [language_projection(Z'); embed(input_ids)], mask [ones; attention_mask];
    `generate` is the LLM's transformers `generate` on those (new tokens only).
Additive attention masks use -10000 as the JAX model (LAVIS) does.
"""
import json
import os
from typing import Optional

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers.models.blip_2.modeling_blip_2 import (Blip2QFormerAttention, Blip2QFormerIntermediate,
                                                        Blip2QFormerOutput, Blip2TextEmbeddings)

MASK_VALUE = -10000.0
CONFIG_FILE, SINGLE_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
# transformers parts: checkpoint prefix -> config key
PARTS = {"vision_model.": "vision_config", "qformer.": "qformer_config", "mae.": "mae_config",
         "language_model.": "text_config"}


# ------------------------------------------------------------------------------------------------
# Config and weights
# ------------------------------------------------------------------------------------------------

def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (expected a directory written by launch/export.py)")
    with open(path) as f:
        config = json.load(f)
    if config.get("model_type") == "blip-2":  # transformers' own BLIP-2 layout: an EVA tower, no fusion
        vision = config.get("vision_config") or {}
        config = dict(config, xformer={
            "stage": "stage2" if config.get("text_config") else "stage1", "vision_kind": "eva",
            "fusion": {"kind": "blip2", "placement": "after_qformer"},
            "vision_layer_norm_eps": vision.get("layer_norm_eps", 1e-6), "mae_inference_mask_ratio": 0.0})
        config["vision_config"] = {"model_type": "blip_2_vision_model", **vision}
        config["qformer_config"] = {"model_type": "blip_2_qformer", **(config.get("qformer_config") or {})}
        if config.get("text_config"):
            config["text_config"] = {"model_type": "opt", **config["text_config"]}
    elif config.get("model_type") != "xformer":
        raise ValueError(f"{path}: model_type {config.get('model_type')!r} is neither 'xformer' nor 'blip-2'")
    return config


def sub_config(config: dict, key: str):
    values = dict(config[key])
    return transformers.AutoConfig.for_model(values.pop("model_type"), **values)


def load_weights(directory: str) -> dict[str, torch.Tensor]:
    index = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    weights = {}
    for file in files:
        weights.update(load_file(os.path.join(directory, file)))
    return weights


def _take(weights: dict, prefix: str) -> dict:
    """Remove and return the entries under `prefix`, the prefix stripped."""
    names = [k for k in weights if k.startswith(prefix)]
    return {k[len(prefix):]: weights.pop(k) for k in names}


def _pretrained(cls, config, state_dict: dict, allowed_missing=(), **kwargs):
    """cls.from_pretrained from an in-memory state dict; every key must be used and every weight given
    (but `allowed_missing`, which the forward never reads)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report; problems are raised below
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=state_dict, output_loading_info=True,
                                          **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing = sorted(set(info["missing_keys"]) - set(allowed_missing))
    problems = missing + sorted(info["unexpected_keys"]) + [str(m) for m in info["mismatched_keys"]]
    if problems:
        raise ValueError(f"{cls.__name__}: the checkpoint does not fit the config (missing {missing}, unexpected "
                         f"{sorted(info['unexpected_keys'])}, mismatched {info['mismatched_keys']})")
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Fusion modules (models/fusion.py), from transformers' Q-Former attention and FFN modules
# ------------------------------------------------------------------------------------------------

class CrossBlock(nn.Module):
    """x attends to memory (another width), then an FFN; both post-LN (fusion.CrossBlock)."""

    def __init__(self, width: int, memory_width: int, heads: int, fusion: dict, attn_implementation: str):
        super().__init__()
        config = transformers.Blip2QFormerConfig(
            hidden_size=width, num_attention_heads=heads, encoder_hidden_size=memory_width,
            intermediate_size=fusion["intermediate_size"], hidden_act=fusion["hidden_act"],
            layer_norm_eps=fusion["layer_norm_eps"], attn_implementation=attn_implementation)
        self.crossattention = Blip2QFormerAttention(config, is_cross_attention=True)
        self.intermediate = Blip2QFormerIntermediate(config)
        self.output = Blip2QFormerOutput(config)

    def forward(self, x, memory):
        x = self.crossattention(hidden_states=x, encoder_hidden_states=memory)
        return self.output(self.intermediate(x), x)


class DualCrossAttention(nn.Module):
    """(Z, M) -> (Z', M'): M' = block(M <- Z) at the MAE width, Z' = block(Z <- M')."""

    def __init__(self, query_width: int, mae_width: int, fusion: dict, attn_implementation: str):
        super().__init__()
        self.mae_block = CrossBlock(mae_width, query_width, fusion["mae_heads"], fusion, attn_implementation)
        self.query_block = CrossBlock(query_width, mae_width, fusion["query_heads"], fusion, attn_implementation)
        # fusion.mae_gate: M' = M + g * block(M <- Z) (exports written before the gate existed have none)
        self.mae_gate = nn.Parameter(torch.zeros(mae_width)) if fusion.get("mae_gate", False) else None

    def forward(self, queries, mae_states):
        enriched = self.mae_block(mae_states, queries)
        mae_states = enriched if self.mae_gate is None else mae_states + self.mae_gate * enriched
        return self.query_block(queries, mae_states), mae_states


class MAEToCLIP(nn.Module):
    def __init__(self, mae_width: int, width: int):
        super().__init__()
        self.proj = nn.Linear(mae_width, width)

    def forward(self, mae_states):
        return self.proj(mae_states)


class ITGHead(nn.Module):
    """The stage-1 Q-Former's LM head (BERT `cls.predictions`), decoder tied to the word embeddings."""

    def __init__(self, width: int, vocab: int, eps: float, act: str):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = nn.Module()
        self.predictions.transform.dense = nn.Linear(width, width)
        self.predictions.transform.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.predictions.bias = nn.Parameter(torch.zeros(vocab))
        self.act = transformers.activations.ACT2FN[act]

    def forward(self, hidden, word_embeddings):
        t = self.predictions.transform
        return t.LayerNorm(self.act(t.dense(hidden))) @ word_embeddings.T + self.predictions.bias


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------

class XFormerModel(nn.Module):
    """Towers, Q-Former and fusion: `query_states(pixel_values, mae_pixel_values)` -> (Z', M')."""

    def __init__(self, config: dict, weights: dict, dtype: Optional[torch.dtype] = None,
                 attn_implementation: Optional[str] = None):
        super().__init__()
        self.config = config
        xf = config["xformer"]
        self.stage, self.fusion_kind = xf["stage"], xf["fusion"]["kind"]
        self.placement = xf["fusion"].get("placement", "after_qformer")
        self.vision_kind, self.ln_vision_eps = xf["vision_kind"], xf["vision_layer_norm_eps"]
        kwargs = {"dtype": dtype or torch.float32}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        attn = attn_implementation or "sdpa"
        weights = dict(weights)

        vision_config = sub_config(config, "vision_config")
        if self.vision_kind == "eva":
            self.vision_model = _pretrained(transformers.Blip2VisionModel, vision_config,
                                            _take(weights, "vision_model."), **kwargs)
        else:
            # The pooled-token norm of a CLIP tower is never read: not in the checkpoint.
            self.vision_model = _pretrained(transformers.CLIPVisionModel, vision_config,
                                            _take(weights, "vision_model."),
                                            allowed_missing=("post_layernorm.weight", "post_layernorm.bias"), **kwargs)
            self.vision_model.post_layernorm = nn.Identity()
            self.ln_vision = nn.LayerNorm(vision_config.hidden_size, eps=self.ln_vision_eps)
        qformer_config = sub_config(config, "qformer_config")
        self.qformer = _pretrained(transformers.Blip2QFormerModel, qformer_config, _take(weights, "qformer."), **kwargs)
        width, queries = qformer_config.hidden_size, config["num_query_tokens"]
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, width))
        self.xattn_layers = [i for i in range(qformer_config.num_hidden_layers)
                             if i % qformer_config.cross_attention_frequency == 0]

        if self.fusion_kind != "blip2":
            mae_config = sub_config(config, "mae_config")
            mae_weights = _take(weights, "mae.")
            if any(k.startswith("decoder.") for k in mae_weights):
                self.mae = _pretrained(transformers.ViTMAEForPreTraining, mae_config, mae_weights, **kwargs)
            else:
                self.mae = nn.Module()
                self.mae.vit = _pretrained(transformers.ViTMAEModel, mae_config, _take(mae_weights, "vit."), **kwargs)
                if mae_weights:
                    raise ValueError(f"unexpected MAE weights {sorted(mae_weights)[:5]}")
            fusion, mae_width = xf["fusion"], mae_config.hidden_size
            if self.fusion_kind == "xformer" and self.placement == "after_qformer":
                self.dual = DualCrossAttention(width, mae_width, fusion, attn)
            elif self.fusion_kind == "xformer":
                self.duals = nn.ModuleList(DualCrossAttention(width, mae_width, fusion, attn)
                                           for _ in self.xattn_layers)
            elif self.fusion_kind == "early_xattn":
                self.mae_xattn = nn.ModuleList(CrossBlock(width, mae_width, fusion["query_heads"], fusion, attn)
                                               for _ in self.xattn_layers)
            elif self.fusion_kind == "concat":
                self.mae_to_clip = MAEToCLIP(mae_width, vision_config.hidden_size)
            else:
                raise ValueError(f"fusion kind {self.fusion_kind!r} is not one of blip2, concat, early_xattn, xformer")
        self._build_heads(config, qformer_config, weights, kwargs)
        self._load_own(weights, dtype)

    def _build_heads(self, config: dict, qformer_config, weights: dict, kwargs: dict) -> None:
        """The stage's own parts; takes their transformers parts' weights out of `weights`."""

    def _load_own(self, weights: dict, dtype) -> None:
        own = {k: v for k, v in self.state_dict().items()
               if not k.startswith(("vision_model.", "qformer.", "mae.", "language_model."))}
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        if missing or unexpected:
            raise ValueError(f"the checkpoint does not fit the config: missing {missing[:10]}, "
                             f"unexpected {unexpected[:10]}")
        wrong = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if tuple(weights[k].shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(f"the checkpoint does not fit the config: {wrong[:10]}")
        self.load_state_dict(weights, strict=False)
        self.to(dtype or torch.float32)
        self.eval()

    @classmethod
    def from_pretrained(cls, directory: str, dtype: Optional[torch.dtype] = None,
                        attn_implementation: Optional[str] = None):
        config = read_config(directory)
        wanted = {"stage1": XFormerForImageTextRetrieval, "stage2": XFormerForConditionalGeneration}[
            config["xformer"]["stage"]]
        if cls is not XFormerModel and not issubclass(wanted, cls):
            raise ValueError(f"{directory} holds a {config['xformer']['stage']} model ({wanted.__name__}), "
                             f"not a {cls.__name__}")
        model = wanted(config, load_weights(directory), dtype, attn_implementation)
        model.read_extras(directory)
        return model

    def read_extras(self, directory: str) -> None:
        """Settings the export wrote next to the weights (generation_config.json at stage 2)."""

    @property
    def dtype(self) -> torch.dtype:
        return self.query_tokens.dtype

    # -- towers -------------------------------------------------------------------------------------
    def vision_features(self, pixel_values):
        """The tower's hidden state the Q-Former reads (before ln_vision)."""
        vm = self.vision_model
        h = vm.embeddings(pixel_values.to(self.dtype))
        if self.vision_kind == "clip":
            h = vm.pre_layrnorm(h)
        return vm.encoder(inputs_embeds=h).last_hidden_state

    def normalize_image(self, memory):
        if self.vision_kind == "eva":
            norm = self.vision_model.post_layernorm
            return F.layer_norm(memory, norm.normalized_shape, norm.weight, norm.bias, self.ln_vision_eps)
        return self.ln_vision(memory)

    def mae_features(self, mae_pixel_values):
        """The MAE encoder's output at the inference masking (identity noise: patches keep their order)."""
        if mae_pixel_values is None:
            raise ValueError(f"fusion {self.fusion_kind!r} reads the MAE tower: pass mae_pixel_values "
                             "(ImageNet-normalised pixels)")
        vit = self.mae.vit  # its config's mask_ratio is the inference ratio (export writes it)
        patches = (vit.config.image_size // vit.config.patch_size) ** 2
        noise = torch.arange(patches, dtype=torch.float32, device=mae_pixel_values.device)
        noise = noise.expand(mae_pixel_values.shape[0], patches)
        return vit(pixel_values=mae_pixel_values.to(self.dtype), noise=noise).last_hidden_state

    def encode_images(self, pixel_values, mae_pixel_values=None):
        images = {"clip": self.vision_features(pixel_values)}
        if self.fusion_kind != "blip2":
            images["mae"] = self.mae_features(mae_pixel_values)
        return images

    def memory(self, images):
        memory = images["clip"]
        if self.fusion_kind == "concat":
            memory = torch.cat([memory, self.mae_to_clip(images["mae"]).to(memory.dtype)], dim=1)
        return self.normalize_image(memory)

    # -- Q-Former -----------------------------------------------------------------------------------
    def _fuse(self, slot: int, queries, carry, mae_states):
        if self.fusion_kind == "early_xattn":
            return self.mae_xattn[slot](queries, mae_states), carry
        if self.fusion_kind == "xformer" and self.placement == "per_xattn_layer":
            return self.duals[slot](queries, carry)
        return queries, carry

    def run_qformer(self, embeds, query_length: int, memory=None, bias=None, mae_states=None):
        """QFormerEncoder.run: layernorm, the layers, the fusion after every cross-attention layer.
        Returns (hidden states, M' carried by the fusion)."""
        x = self.qformer.layernorm(embeds.to(self.qformer.layernorm.weight.dtype))
        carry, slot = mae_states, 0
        for i, layer in enumerate(self.qformer.encoder.layer):
            x = layer(x, bias, memory, encoder_attention_mask=None, query_length=query_length)
            if query_length > 0 and i in self.xattn_layers:
                queries, carry = self._fuse(slot, x[:, :query_length], carry, mae_states)
                x = torch.cat([queries.to(x.dtype), x[:, query_length:]], dim=1)
                slot += 1
        return x, carry

    def finish(self, queries, carry, mae_states):
        if self.fusion_kind == "xformer" and self.placement == "after_qformer":
            return self.dual(queries, mae_states)
        return queries, carry

    def query_states(self, pixel_values, mae_pixel_values=None):
        """Z' (B, Q, H) and M' (the MAE stream after the fusion, None without one)."""
        images = self.encode_images(pixel_values, mae_pixel_values)
        memory = self.memory(images)
        queries = self.query_tokens.expand(memory.shape[0], -1, -1)
        x, carry = self.run_qformer(queries, queries.shape[1], memory, None, images.get("mae"))
        return self.finish(x, carry, images.get("mae"))


class XFormerForConditionalGeneration(XFormerModel):
    """Stage 2: Z' -> language_projection -> the LLM (models/stage2.py)."""

    def _build_heads(self, config: dict, qformer_config, weights: dict, kwargs: dict) -> None:
        text_config = sub_config(config, "text_config")
        cls = transformers.MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)]
        tied = ("lm_head.weight",) if getattr(text_config, "tie_word_embeddings", False) else ()
        self.language_model = _pretrained(cls, text_config, _take(weights, "language_model."), allowed_missing=tied,
                                          **kwargs)
        width = self.language_model.get_input_embeddings().weight.shape[1]
        self.language_projection = nn.Linear(qformer_config.hidden_size, width)

    def prompt_embeddings(self, pixel_values, input_ids, attention_mask=None, mae_pixel_values=None):
        """(inputs_embeds, attention_mask): [projected queries; prompt token embeddings], [ones; mask]."""
        queries, _ = self.query_states(pixel_values, mae_pixel_values)
        prefix = self.language_projection(queries)
        tokens = self.language_model.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], dim=1)
        return embeds, mask

    def _default_ids(self, pixel_values):
        bos = self.language_model.config.bos_token_id
        return torch.full((pixel_values.shape[0], 1), bos, dtype=torch.long, device=pixel_values.device)

    def forward(self, pixel_values, input_ids=None, attention_mask=None, mae_pixel_values=None):
        """The LLM's logits (B, Q + T, vocab) over [queries; tokens] (tokens default to [bos])."""
        input_ids = self._default_ids(pixel_values) if input_ids is None else input_ids
        embeds, mask = self.prompt_embeddings(pixel_values, input_ids, attention_mask, mae_pixel_values)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask).logits

    @torch.no_grad()
    def generate(self, pixel_values, input_ids=None, attention_mask=None, mae_pixel_values=None, **generate_kwargs):
        """New tokens from the LLM's transformers `generate` on [queries; prompt] (prompt defaults to
        [bos]); decoding settings default to the export's generation_config.json (Captioner's: beam
        search with 5 beams, eos = the "\\n" token, up to 20 new tokens)."""
        input_ids = self._default_ids(pixel_values) if input_ids is None else input_ids
        embeds, mask = self.prompt_embeddings(pixel_values, input_ids, attention_mask, mae_pixel_values)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)

    def read_extras(self, directory: str) -> None:
        if os.path.exists(os.path.join(directory, "generation_config.json")):
            self.language_model.generation_config = transformers.GenerationConfig.from_pretrained(directory)


class XFormerForImageTextRetrieval(XFormerModel):
    """Stage 1: ITC similarities and ITM logits with HF Blip2ForImageTextRetrieval's outputs, on the
    fused queries (models/xformer.py retrieval_embeddings / itm_logits)."""

    def _build_heads(self, config: dict, qformer_config, weights: dict, kwargs: dict) -> None:
        width, embed_dim = qformer_config.hidden_size, config["image_text_hidden_size"]
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.vision_projection = nn.Linear(width, embed_dim)
        self.text_projection = nn.Linear(width, embed_dim)
        self.itm_head = nn.Linear(width, 2)
        if "cls.predictions.bias" in weights:  # X-Former exports carry the ITG head and temp; HF BLIP-2 has neither
            self.cls = ITGHead(width, qformer_config.vocab_size, qformer_config.layer_norm_eps,
                               qformer_config.hidden_act)
        if "temp" in weights:
            self.temp = nn.Parameter(torch.tensor(0.07))

    @staticmethod
    def _bias(mask, num_queries: int = 0):
        mask = mask.to(torch.float32)
        keys = torch.cat([torch.ones(mask.shape[0], num_queries, device=mask.device), mask], dim=1)
        return (1.0 - keys)[:, None, None, :] * MASK_VALUE

    def text_hidden(self, input_ids, attention_mask=None):
        """The text-only pass (ITC text side): (B, T, H)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x, _ = self.run_qformer(self.embeddings(input_ids), 0, None, self._bias(mask))
        return x

    def image_embeds(self, pixel_values, mae_pixel_values=None):
        queries, _ = self.query_states(pixel_values, mae_pixel_values)
        return F.normalize(self.vision_projection(queries).float(), dim=-1)

    def text_embeds(self, input_ids, attention_mask=None):
        return F.normalize(self.text_projection(self.text_hidden(input_ids, attention_mask)[:, 0]).float(), dim=-1)

    def itm_logits(self, pixel_values, input_ids, attention_mask=None, mae_pixel_values=None):
        """ITM over paired rows: (B, 2), the itm_head averaged over the fused query outputs."""
        images = self.encode_images(pixel_values, mae_pixel_values)
        memory = self.memory(images)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        num_queries = queries.shape[1]
        embeds = torch.cat([queries, self.embeddings(input_ids).to(queries.dtype)], dim=1)
        x, carry = self.run_qformer(embeds, num_queries, memory, self._bias(mask, num_queries), images.get("mae"))
        fused, _ = self.finish(x[:, :num_queries], carry, images.get("mae"))
        return self.itm_head(fused).float().mean(dim=1)

    def forward(self, pixel_values, input_ids, attention_mask=None, mae_pixel_values=None,
                use_image_text_matching_head: bool = False) -> dict:
        """As Blip2ForImageTextRetrieval: ITM logits_per_image (B, 2), or ITC max-over-queries cosines
        (B_img, B_txt) with image_embeds / text_embeds. logits_per_text is the transpose."""
        if self.config.get("image_token_index") is not None:  # as HF: the processor's leading image tokens go
            num_queries = self.query_tokens.shape[1]
            input_ids = input_ids[:, num_queries:]
            attention_mask = None if attention_mask is None else attention_mask[:, num_queries:]
        if use_image_text_matching_head:
            logits = self.itm_logits(pixel_values, input_ids, attention_mask, mae_pixel_values)
            return {"logits_per_image": logits, "logits_per_text": logits.T}
        image = self.image_embeds(pixel_values, mae_pixel_values)
        text = self.text_embeds(input_ids, attention_mask)
        per_image = torch.einsum("iqd,td->itq", image, text).max(dim=-1).values
        return {"logits_per_image": per_image, "logits_per_text": per_image.T, "image_embeds": image,
                "text_embeds": text}


def from_pretrained(directory: str, dtype: Optional[torch.dtype] = None, attn_implementation: Optional[str] = None):
    """The model class the export's config names (stage 1: retrieval, stage 2: generation)."""
    return XFormerModel.from_pretrained(directory, dtype, attn_implementation)
