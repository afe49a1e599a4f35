"""Rename tables, HF checkpoint module names -> Flax module paths, one per model family."""


def _vit_block(hf: str, flax: str, names: dict) -> list[tuple[str, str]]:
    """Rules for one family's pre-LN block; `names` maps our block parts to the family's HF names."""
    return [(f"{hf}.{names[part]}", f"{flax}/{part}") for part in names]


CLIP_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn/query": "self_attn.q_proj",
              "attn/key": "self_attn.k_proj", "attn/value": "self_attn.v_proj", "attn/out": "self_attn.out_proj",
              "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
EVA_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn/qkv": "self_attn.qkv",
             "attn/out": "self_attn.projection", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}
MAE_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn/query": "attention.attention.query",
             "attn/key": "attention.attention.key", "attn/value": "attention.attention.value",
             "attn/out": "attention.output.dense", "mlp/fc1": "intermediate.dense", "mlp/fc2": "output.dense"}

CLIP_VISION = [
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.patch_embedding", "patch_embed/proj"),
    ("embeddings.position_embedding.weight", "pos_embed"),
    ("pre_layrnorm", "pre_norm"),
    ("post_layernorm", "post_norm"),
    *_vit_block("encoder.layers.{i}", "blocks/block_{i}", CLIP_BLOCK),
]
# HF's Blip2VisionModel stores the position table as a bare parameter (1, N+1, D).
EVA_VISION = [
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.patch_embedding", "patch_embed/proj"),
    ("embeddings.position_embedding", "pos_embed"),
    ("post_layernorm", "post_norm"),
    *_vit_block("encoder.layers.{i}", "blocks/block_{i}", EVA_BLOCK),
]


def mae_encoder(hf_prefix: str = "", flax_prefix: str = "") -> list[tuple[str, str]]:
    h, f = hf_prefix, flax_prefix
    return [
        (f"{h}embeddings.cls_token", f"{f}cls_token"),
        (f"{h}embeddings.position_embeddings", f"{f}pos_embed"),
        (f"{h}embeddings.patch_embeddings.projection", f"{f}patch_embed/proj"),
        (f"{h}layernorm", f"{f}norm"),
        *_vit_block(f"{h}encoder.layer.{{i}}", f"{f}blocks/block_{{i}}", MAE_BLOCK),
    ]


# transformers 5 writes the decoder blocks as `decoder_encoder.layer.N`, the released MAE
# checkpoints as `decoder_layers.N`: both are read; export writes the first rule that matches, so
# transformers 5's names come first.
MAE_DECODER = [
    ("decoder.decoder_embed", "decoder/embed"),
    ("decoder.mask_token", "decoder/mask_token"),
    ("decoder.decoder_pos_embed", "decoder/pos_embed"),
    ("decoder.decoder_norm", "decoder/norm"),
    ("decoder.decoder_pred", "decoder/pred"),
    *_vit_block("decoder.decoder_encoder.layer.{i}", "decoder/blocks/block_{i}", MAE_BLOCK),
    *_vit_block("decoder.decoder_layers.{i}", "decoder/blocks/block_{i}", MAE_BLOCK),
]


def _attention(hf: str, flax: str, block: str, holder: str) -> list[tuple[str, str]]:
    """A BERT attention block `block` (q/k/v under `holder`, then output dense + LayerNorm)."""
    rules = [(f"{hf}.{block}.{holder}.{p}", f"{flax}/{block}/{p}") for p in ("query", "key", "value")]
    return rules + [(f"{hf}.{block}.output.dense", f"{flax}/{block}/output/dense"),
                    (f"{hf}.{block}.output.LayerNorm", f"{flax}/{block}/output/layernorm")]


def _ffn(hf: str, flax: str, suffix: str = "") -> list[tuple[str, str]]:
    """A BERT FFN: `intermediate{suffix}.dense`, then `output{suffix}` dense + LayerNorm."""
    return [(f"{hf}.intermediate{suffix}.dense", f"{flax}/intermediate{suffix}/dense"),
            (f"{hf}.output{suffix}.dense", f"{flax}/output{suffix}/dense"),
            (f"{hf}.output{suffix}.LayerNorm", f"{flax}/output{suffix}/layernorm")]


def qformer_layer(hf: str, flax: str, self_attention: str) -> list[tuple[str, str]]:
    """One Q-Former / BERT layer. `self_attention` is HF's name of the q/k/v holder: "attention" in
    Blip2QFormerModel (`attention.attention.query`), "self" in BERT (`attention.self.query`)."""
    return [*_attention(hf, flax, "attention", self_attention), *_attention(hf, flax, "crossattention", self_attention),
            *_ffn(hf, flax), *_ffn(hf, flax, "_query")]


# HF Blip2QFormerModel -> models.qformer.QFormerEncoder.
QFORMER = [
    ("layernorm", "layernorm"),
    *qformer_layer("encoder.layer.{i}", "layer_{i}", "attention"),
]

# BERT's `cls.predictions` (the decoder is tied to the word embeddings) -> QFormer.lm_head.
LM_HEAD = [
    ("cls.predictions.transform.dense", "lm_head/dense"),
    ("cls.predictions.transform.LayerNorm", "lm_head/layernorm"),
    ("cls.predictions.bias", "lm_head/bias"),
]

# BERT (BertModel, or BertLMHeadModel / BertForMaskedLM with `bert.` stripped) -> models.qformer.QFormer.
# The query FFN (`*_query`) rules read copies of the text FFN that the BERT fixups add; the
# token-type row is folded into the position table by the fixups too.
BERT_QFORMER = [
    ("embeddings.word_embeddings", "embeddings/word_embeddings"),
    ("embeddings.position_embeddings", "embeddings/position_embeddings"),
    ("embeddings.LayerNorm", "qformer/layernorm"),
    *qformer_layer("encoder.layer.{i}", "qformer/layer_{i}", "self"),
    *LM_HEAD,
]

# HF Blip2ForImageTextRetrieval -> models.qformer.QFormer. HF's vision `post_layernorm` is LAVIS's
# `ln_vision` (HF runs it on the tower output the Q-Former reads), so it fills the Q-Former's ln_vision.
BLIP2_RETRIEVAL_QFORMER = [
    ("vision_model.post_layernorm", "ln_vision"),
    ("query_tokens", "query_tokens"),
    ("embeddings.word_embeddings", "embeddings/word_embeddings"),
    ("embeddings.position_embeddings", "embeddings/position_embeddings"),
    *[(f"qformer.{hf}", f"qformer/{flax}") for hf, flax in QFORMER],
    ("vision_projection", "vision_proj"),
    ("text_projection", "text_proj"),
    ("itm_head", "itm_head"),
]
# ... -> models.blip2_retrieval.Blip2ForImageTextRetrieval (Stage1Model's tree, whose tower has no norm).
BLIP2_RETRIEVAL = [
    *[(f"vision_model.{hf}", f"vision/{flax}") for hf, flax in EVA_VISION if hf != "post_layernorm"],
    *[(hf, f"qformer/{flax}") for hf, flax in BLIP2_RETRIEVAL_QFORMER],
]


# HF OPTForCausalLM -> models.opt.OPTForCausalLM. `lm_head` is read only for untied heads (the
# recipe's fixups drop a saved copy of the tied embedding).
OPT_LAYER = {"self_attn/q_proj": "self_attn.q_proj", "self_attn/k_proj": "self_attn.k_proj",
             "self_attn/v_proj": "self_attn.v_proj", "self_attn/out_proj": "self_attn.out_proj",
             "self_attn_layer_norm": "self_attn_layer_norm", "fc1": "fc1", "fc2": "fc2",
             "final_layer_norm": "final_layer_norm"}
OPT_CAUSAL_LM = [
    ("model.decoder.embed_tokens", "embed_tokens"),
    ("model.decoder.embed_positions", "embed_positions"),
    ("model.decoder.project_in", "project_in"),
    ("model.decoder.project_out", "project_out"),
    ("model.decoder.final_layer_norm", "final_layer_norm"),
    *_vit_block("model.decoder.layers.{i}", "layer_{i}", OPT_LAYER),
    ("lm_head", "lm_head"),
]

# HF LlamaForCausalLM -> models.llama.LlamaForCausalLM (RMSNorm weights become `scale`).
LLAMA_LAYER = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
               **{f"self_attn/{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
               **{f"mlp/{p}": f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}}
LLAMA_CAUSAL_LM = [
    ("model.embed_tokens", "embed_tokens"),
    ("model.norm", "norm"),
    *_vit_block("model.layers.{i}", "layer_{i}", LLAMA_LAYER),
    ("lm_head", "lm_head"),
]


# ------------------------------------------------------------------------------------------------
# Whole stage-1 / stage-2 models (import of BLIP-2 checkpoints and export, which inverts these rules).
# ------------------------------------------------------------------------------------------------

def cross_block(hf: str, flax: str) -> list[tuple[str, str]]:
    """fusion.CrossBlock as transformers' Q-Former modules hold it: `crossattention` a
    Blip2QFormerAttention (keys / values from the other stream's width), then Blip2QFormerIntermediate
    and Blip2QFormerOutput (`intermediate`, `output`)."""
    return [*_attention(hf, flax, "crossattention", "attention"), *_ffn(hf, flax)]


# The fusion variants' own params (models/fusion.py, Stage1Model.setup) -> xformer_jax.torch's names.
FUSION = [
    *cross_block("dual.mae_block", "dual/mae_block"),
    *cross_block("dual.query_block", "dual/query_block"),
    *cross_block("duals.{i}.mae_block", "duals_{i}/mae_block"),
    *cross_block("duals.{i}.query_block", "duals_{i}/query_block"),
    ("dual.mae_gate", "dual/mae_gate"),
    ("duals.{i}.mae_gate", "duals_{i}/mae_gate"),
    *cross_block("mae_xattn.{i}", "mae_xattn_{i}"),
    ("mae_to_clip.proj", "mae_to_clip/proj"),
]

# What the stage-1 Q-Former has beyond Blip2ForImageTextRetrieval: the ITG head (BERT's names) and temp.
QFORMER_EXTRAS = [
    *LM_HEAD,
    ("temp", "temp"),
]

LLM_TABLES = {"opt": OPT_CAUSAL_LM, "llama": LLAMA_CAUSAL_LM}


def stage_model(vision_kind: str = "eva", llm_kinds: tuple = ()) -> list[tuple[str, str]]:
    """Stage1Model / Stage2Model params <-> one flat namespace: transformers' BLIP-2 names wherever
    BLIP-2 has the part (Blip2ForImageTextRetrieval at stage 1, Blip2ForConditionalGeneration at
    stage 2), plus the X-Former parts (`FUSION`, the MAE as ViTMAEForPreTraining under `mae.`).

    The Q-Former's ln_vision is the EVA tower's `post_layernorm` (as in HF BLIP-2, whose tower output
    the Q-Former reads); a CLIP tower's post_layernorm normalises only the pooled token, so there
    ln_vision has a name of its own. `llm_kinds` adds `language_model.` rules for those LLMs (export
    passes exactly one, so that every param has a single name)."""
    if vision_kind not in ("eva", "clip"):
        raise ValueError(f"vision kind {vision_kind!r} is not one of ('eva', 'clip')")
    vision = EVA_VISION if vision_kind == "eva" else CLIP_VISION
    rules = [(f"vision_model.{hf}", f"vision/{flax}") for hf, flax in vision if hf != "post_layernorm"]
    rules.append(("vision_model.post_layernorm" if vision_kind == "eva" else "ln_vision", "qformer/ln_vision"))
    rules += [(hf, f"qformer/{flax}") for hf, flax in BLIP2_RETRIEVAL_QFORMER if hf != "vision_model.post_layernorm"]
    rules += [(hf, f"qformer/{flax}") for hf, flax in QFORMER_EXTRAS]
    rules += FUSION
    rules += mae_encoder("mae.vit.", "mae/encoder/")
    rules += [(f"mae.{hf}", f"mae/{flax}") for hf, flax in MAE_DECODER]
    if llm_kinds:
        rules.append(("language_projection", "llm_proj"))
    for kind in llm_kinds:
        rules += [(f"language_model.{hf}", f"llm/{flax}") for hf, flax in LLM_TABLES[kind]]
    return rules


def stage_model_ndims(vision_kind: str) -> dict[str, int]:
    """Bare params whose transformers tensor has leading singleton dims ours lacks (or fewer): their
    rank there. Everything else keeps its rank (kernels transposed, see mapping.flax_to_hf)."""
    return {
        "vision_model.embeddings.class_embedding": 3 if vision_kind == "eva" else 1,
        **({"vision_model.embeddings.position_embedding": 3} if vision_kind == "eva" else {}),
        "query_tokens": 3,
        "mae.vit.embeddings.cls_token": 3,
        "mae.vit.embeddings.position_embeddings": 3,
        "mae.decoder.mask_token": 3,
        "mae.decoder.decoder_pos_embed": 3,
    }
