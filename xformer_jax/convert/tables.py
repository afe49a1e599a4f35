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
# checkpoints as `decoder_layers.N`: both are read.
MAE_DECODER = [
    ("decoder.decoder_embed", "decoder/embed"),
    ("decoder.mask_token", "decoder/mask_token"),
    ("decoder.decoder_pos_embed", "decoder/pos_embed"),
    ("decoder.decoder_norm", "decoder/norm"),
    ("decoder.decoder_pred", "decoder/pred"),
    *_vit_block("decoder.decoder_layers.{i}", "decoder/blocks/block_{i}", MAE_BLOCK),
    *_vit_block("decoder.decoder_encoder.layer.{i}", "decoder/blocks/block_{i}", MAE_BLOCK),
]


def qformer_layer(hf: str, flax: str, self_attention: str) -> list[tuple[str, str]]:
    """One Q-Former / BERT layer. `self_attention` is HF's name of the q/k/v holder: "attention" in
    Blip2QFormerModel (`attention.attention.query`), "self" in BERT (`attention.self.query`)."""
    rules = []
    for block in ("attention", "crossattention"):
        rules += [(f"{hf}.{block}.{self_attention}.{p}", f"{flax}/{block}/{p}") for p in ("query", "key", "value")]
        rules += [(f"{hf}.{block}.output.dense", f"{flax}/{block}/output/dense"),
                  (f"{hf}.{block}.output.LayerNorm", f"{flax}/{block}/output/layernorm")]
    for suffix in ("", "_query"):
        rules += [(f"{hf}.intermediate{suffix}.dense", f"{flax}/intermediate{suffix}/dense"),
                  (f"{hf}.output{suffix}.dense", f"{flax}/output{suffix}/dense"),
                  (f"{hf}.output{suffix}.LayerNorm", f"{flax}/output{suffix}/layernorm")]
    return rules


# HF Blip2QFormerModel -> models.qformer.QFormerEncoder.
QFORMER = [
    ("layernorm", "layernorm"),
    *qformer_layer("encoder.layer.{i}", "layer_{i}", "attention"),
]

# BERT (BertModel, or BertLMHeadModel / BertForMaskedLM with `bert.` stripped) -> models.qformer.QFormer.
# The query FFN (`*_query`) rules read copies of the text FFN that the BERT fixups add; the
# token-type row is folded into the position table by the fixups too.
BERT_QFORMER = [
    ("embeddings.word_embeddings", "embeddings/word_embeddings"),
    ("embeddings.position_embeddings", "embeddings/position_embeddings"),
    ("embeddings.LayerNorm", "qformer/layernorm"),
    *qformer_layer("encoder.layer.{i}", "qformer/layer_{i}", "self"),
    ("cls.predictions.transform.dense", "lm_head/dense"),
    ("cls.predictions.transform.LayerNorm", "lm_head/layernorm"),
    ("cls.predictions.bias", "lm_head/bias"),
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
