"""Tiny random transformers models saved with save_pretrained: the parity references.

Weights are perturbed away from transformers' init (zeros, ones) so that every parameter matters.
"""
import torch
import transformers as T


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


def tiny_vision_kwargs(**overrides) -> dict:
    kwargs = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  image_size=32, patch_size=8)
    kwargs.update(overrides)
    return kwargs


def clip_vision(**overrides) -> T.CLIPVisionModel:
    config = T.CLIPVisionConfig(**tiny_vision_kwargs(**overrides), attn_implementation="eager")
    return randomize(T.CLIPVisionModel(config))


def eva_vision(**overrides) -> T.Blip2VisionModel:
    config = T.Blip2VisionConfig(**tiny_vision_kwargs(**overrides), attn_implementation="eager")
    return randomize(T.Blip2VisionModel(config), seed=1)


def mae_config(**overrides) -> T.ViTMAEConfig:
    kwargs = dict(tiny_vision_kwargs(), decoder_hidden_size=16, decoder_num_hidden_layers=2,
                  decoder_num_attention_heads=2, decoder_intermediate_size=32, mask_ratio=0.75)
    kwargs.update(overrides)
    return T.ViTMAEConfig(**kwargs, attn_implementation="eager")


def mae_pretraining(**overrides) -> T.ViTMAEForPreTraining:
    return randomize(T.ViTMAEForPreTraining(mae_config(**overrides)), seed=2)


def save(model, directory, **kwargs) -> str:
    model.save_pretrained(str(directory), **kwargs)
    return str(directory)


def tiny_qformer_kwargs(**overrides) -> dict:
    """A 4-layer Q-Former whose vision width (24) differs from its own (32), cross-attention every 2."""
    kwargs = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                  cross_attention_frequency=2, encoder_hidden_size=24, vocab_size=99, max_position_embeddings=40)
    kwargs.update(overrides)
    return kwargs


def blip2_qformer(**overrides) -> T.Blip2QFormerModel:
    config = T.Blip2QFormerConfig(**tiny_qformer_kwargs(**overrides), attn_implementation="eager")
    return randomize(T.Blip2QFormerModel(config), seed=3)


def bert_config(**overrides) -> T.BertConfig:
    kwargs = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=40, type_vocab_size=2)
    kwargs.update(overrides)
    return T.BertConfig(**kwargs, attn_implementation="eager")


def bert(kind: str = "BertModel", **overrides):
    """A tiny random BertModel / BertLMHeadModel / BertForMaskedLM."""
    return randomize(getattr(T, kind)(bert_config(**overrides)), seed=4)


def blip2_retrieval_config(**qformer_overrides) -> T.Blip2Config:
    """Vision 32 wide, 2 blocks; a 2-layer Q-Former reading that width, cross-attention in layer 0 only
    (frequency 2), with the text FFN the retrieval text pass needs; 4 queries, 16-wide ITC space."""
    qformer = tiny_qformer_kwargs(num_hidden_layers=2, encoder_hidden_size=32, use_qformer_text_input=True)
    qformer.update(qformer_overrides)
    return T.Blip2Config(vision_config=tiny_vision_kwargs(num_hidden_layers=2), qformer_config=qformer,
                         num_query_tokens=4, image_text_hidden_size=16, attn_implementation="eager")


def blip2_retrieval(**qformer_overrides) -> T.Blip2ForImageTextRetrieval:
    """Seeded init (without touching torch's global RNG) and a wider perturbation (std 0.2): at 0.05 the
    ITC / ITM logits of different pairs differ only in the third decimal."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = T.Blip2ForImageTextRetrieval(blip2_retrieval_config(**qformer_overrides))
    return randomize(model, seed=5, std=0.2)


def opt_config(**overrides) -> T.OPTConfig:
    """A 2-layer OPT, 32 wide; `post_ln=True`-style overrides give the OPT-350m layout."""
    kwargs = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=4,
                  max_position_embeddings=40, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    kwargs.update(overrides)
    return T.OPTConfig(**kwargs, attn_implementation="eager")


def opt_350m_style(**overrides) -> dict:
    """OPT-350m's differences: post-LN (no final LayerNorm) and 24-wide token embeddings projected in / out."""
    return dict(dict(do_layer_norm_before=False, word_embed_proj_dim=24), **overrides)


def opt_causal_lm(**overrides) -> T.OPTForCausalLM:
    """Seeded init (without touching torch's global RNG), perturbed with std 0.2: tiny random LMs need
    spread-out logits for greedy / beam choices not to hinge on float rounding."""
    with torch.random.fork_rng():
        torch.manual_seed(6)
        model = T.OPTForCausalLM(opt_config(**overrides))
    return randomize(model, seed=6, std=0.2)


def llama_config(**overrides) -> T.LlamaConfig:
    """A 2-layer LLaMA, 32 wide, 4 query heads sharing 2 key/value heads (GQA), rope_theta 500."""
    kwargs = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rope_parameters={"rope_type": "default",
                  "rope_theta": 500.0}, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kwargs.update(overrides)
    return T.LlamaConfig(**kwargs, attn_implementation="eager")


def llama_causal_lm(**overrides) -> T.LlamaForCausalLM:
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = T.LlamaForCausalLM(llama_config(**overrides))
    return randomize(model, seed=7, std=0.2)
