"""Whole-model configs both ways: HF BLIP-2 config.json <-> Stage1Config / Stage2Config <-> config.model.

  stage2_config_from_hf   Blip2ForConditionalGeneration's config.json -> a blip2-fusion Stage2Config
  model_section           a Stage1Config / Stage2Config -> the `config.model` keys that rebuild it
  hf_config               a Stage1Config / Stage2Config -> config.json for transformers' BLIP-2 classes
                          ("hf") or for xformer_jax.torch ("xformer": BLIP-2's fields plus mae_config and
                          an `xformer` section with the fusion)
"""
import dataclasses
from typing import Optional

from xformer_jax.models import blip2_retrieval, llama, mae, opt, qformer, stage2, vit, xformer

RUNTIME_FIELDS = ("dtype", "remat", "scan_layers")  # compute settings, not architecture: config.model.dtype covers them
XFORMER_ARCHITECTURES = {"stage1": "XFormerForImageTextRetrieval", "stage2": "XFormerForConditionalGeneration"}
BLIP2_ARCHITECTURES = {"stage1": "Blip2ForImageTextRetrieval", "stage2": "Blip2ForConditionalGeneration"}
XFORMER_MODEL_TYPE = "xformer"


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in RUNTIME_FIELDS}


def llm_kind(config) -> str:
    return "llama" if isinstance(config, llama.LlamaConfig) else "opt"


def stage_of(config: xformer.Stage1Config) -> str:
    return "stage2" if isinstance(config, stage2.Stage2Config) else "stage1"


# ------------------------------------------------------------------------------------------------
# HF -> ours
# ------------------------------------------------------------------------------------------------

def llm_config_from_hf(text_config: dict, **overrides):
    kind = text_config.get("model_type")
    if kind == "opt":
        return opt.config_from_hf(text_config, **overrides)
    if kind == "llama":
        return llama.config_from_hf(text_config, **overrides)
    raise ValueError(f"language model type {kind!r} is not supported; supported: ['llama', 'opt']")


def stage2_config_from_hf(hf: dict, **overrides) -> stage2.Stage2Config:
    """A blip2-fusion Stage2Config from Blip2ForConditionalGeneration's config.json: the retrieval
    model's tower and Q-Former (features = the tower's last block, ln_vision = its post_layernorm),
    the decoder LLM of `text_config`. `dtype` (the only override) reaches every part."""
    unknown = set(overrides) - {"dtype"}
    if unknown:
        raise ValueError(f"unknown Blip2ForConditionalGeneration config override(s) {sorted(unknown)}")
    text = hf.get("text_config") or {}
    if hf.get("use_decoder_only_language_model") is False or text.get("is_encoder_decoder"):
        raise ValueError(f"language model type {text.get('model_type')!r} is an encoder-decoder; only decoder LLMs "
                         "(OPT, LLaMA) are supported at stage 2")
    qformer_hf = dict(hf.get("qformer_config") or {}, use_qformer_text_input=True)  # the retrieval parser's check
    stage1 = blip2_retrieval.config_from_hf(dict(hf, qformer_config=qformer_hf), **overrides)
    text_ffn = bool((hf.get("qformer_config") or {}).get("use_qformer_text_input"))
    q = dataclasses.replace(stage1.qformer, text_ffn=text_ffn)
    llm = llm_config_from_hf(text, **overrides)
    return stage2.Stage2Config(vision=stage1.vision, qformer=q, fusion=stage1.fusion, llm=llm)


# ------------------------------------------------------------------------------------------------
# ours -> config.model
# ------------------------------------------------------------------------------------------------

def model_section(config: xformer.Stage1Config, dtype: str = "float32") -> dict:
    """The `config.model` keys (build.model_config's input) that rebuild `config`."""
    out = {"dtype": dtype, "vision": _fields(config.vision), "qformer": _fields(config.qformer),
           "fusion": _fields(config.fusion), "mae": _fields(config.mae) if config.mae is not None else {}}
    if isinstance(config, stage2.Stage2Config):
        out["llm"] = {"kind": llm_kind(config.llm), **_fields(config.llm)}
        out["llm"]["eos_token_id"] = _jsonable(out["llm"]["eos_token_id"])
        out["stage2_reconstruction_weight"] = config.reconstruction_weight
        out["stage2_mask_ratio"] = config.mask_ratio
    out["inference_mask_ratio"] = config.inference_mask_ratio
    out["itg_context"] = config.itg_context
    return out


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------------------------
# ours -> HF config.json
# ------------------------------------------------------------------------------------------------

def vision_hf(v: vit.VisionConfig) -> dict:
    """The tower truncated to the blocks the Q-Former reads (the checkpoint holds no others)."""
    common = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                  num_hidden_layers=v.feature_depth, num_attention_heads=v.num_attention_heads,
                  image_size=v.image_size, patch_size=v.patch_size, hidden_act=v.hidden_act,
                  layer_norm_eps=v.layer_norm_eps)
    if v.kind == "eva":
        return {"model_type": "blip_2_vision_model", **common, "qkv_bias": True}
    return {"model_type": "clip_vision_model", **common, "num_channels": v.num_channels}


def qformer_hf(q: qformer.QFormerConfig, text_input: bool) -> dict:
    """`text_input`: the text FFN is in the checkpoint (stage 1; stage 2 runs the query path only)."""
    return {"model_type": "blip_2_qformer", "vocab_size": q.vocab_size, "hidden_size": q.hidden_size,
            "num_hidden_layers": q.num_hidden_layers, "num_attention_heads": q.num_attention_heads,
            "intermediate_size": q.intermediate_size, "hidden_act": q.hidden_act,
            "layer_norm_eps": q.layer_norm_eps, "max_position_embeddings": q.max_position_embeddings,
            "pad_token_id": q.pad_token_id, "cross_attention_frequency": q.cross_attention_freq,
            "encoder_hidden_size": q.encoder_width, "use_qformer_text_input": text_input and q.text_ffn,
            "hidden_dropout_prob": q.hidden_dropout_prob,
            "attention_probs_dropout_prob": q.attention_probs_dropout_prob}


def llm_hf(c, vocab_size: Optional[int] = None) -> dict:
    tokens = dict(pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=_jsonable(c.eos_token_id),
                  tie_word_embeddings=c.tie_word_embeddings, vocab_size=vocab_size or c.vocab_size)
    if isinstance(c, llama.LlamaConfig):
        return {"model_type": "llama", "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "hidden_act": c.hidden_act,
                "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
                "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
                "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias, **tokens}
    return {"model_type": "opt", "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
            "ffn_dim": c.ffn_dim, "num_attention_heads": c.num_attention_heads,
            "max_position_embeddings": c.max_position_embeddings, "word_embed_proj_dim": c.word_embed_proj_dim,
            "do_layer_norm_before": c.do_layer_norm_before, "_remove_final_layer_norm": c.remove_final_layer_norm,
            "activation_function": c.activation_function, "enable_bias": c.enable_bias,
            "layer_norm_elementwise_affine": c.layer_norm_elementwise_affine, "layer_norm_eps": c.layer_norm_eps,
            **tokens}


def mae_hf(m: mae.MAEConfig, mask_ratio: float) -> dict:
    """ViTMAEConfig; `mask_ratio` is the ratio inference runs at (config.inference_mask_ratio)."""
    return {"model_type": "vit_mae", **{k: v for k, v in _fields(m).items() if k != "mask_ratio"},
            "mask_ratio": mask_ratio, "qkv_bias": True}


def hf_config(config: xformer.Stage1Config, export_format: str, *, dtype: str = "float32",
              image_token_index: Optional[int] = None, vocab_size: Optional[int] = None) -> dict:
    """config.json of an export. "hf": transformers' Blip2ForImageTextRetrieval / Blip2ForConditionalGeneration
    (a blip2-fusion model with an EVA tower); "xformer": the same fields plus `mae_config` and an
    `xformer` section, read by xformer_jax.torch."""
    stage = stage_of(config)
    q = config.qformer
    out = {
        "architectures": [(BLIP2_ARCHITECTURES if export_format == "hf" else XFORMER_ARCHITECTURES)[stage]],
        "model_type": "blip-2" if export_format == "hf" else XFORMER_MODEL_TYPE,
        "vision_config": vision_hf(config.vision),
        "qformer_config": qformer_hf(q, text_input=stage == "stage1"),
        "num_query_tokens": q.num_query_tokens,
        "image_text_hidden_size": q.embed_dim,
        "image_token_index": image_token_index,
        "dtype": dtype,
    }
    if stage == "stage2":
        out["text_config"] = llm_hf(config.llm, vocab_size)
        out["use_decoder_only_language_model"] = True
    if export_format == "xformer":
        out["xformer"] = {
            "stage": stage,
            "fusion": _fields(config.fusion),
            "vision_kind": config.vision.kind,
            # ln_vision's eps (an EVA tower's ln_vision is its post_layernorm's weights at this eps)
            "vision_layer_norm_eps": q.vision_layer_norm_eps,
            "dec_token_id": q.dec_token_id,
            "mae_inference_mask_ratio": config.inference_mask_ratio,
        }
        if config.mae is not None:
            out["mae_config"] = mae_hf(config.mae, config.inference_mask_ratio)
    return out
