"""The paper's stage-1 setup (X-Former, Swetha et al., ECCV 2024; BLIP-2's recipe where the paper is silent).

  launch/train.py --config=configs/paper.py:stage1 --workdir=DIR \
      --config.model.vision.hf_dir=... --config.model.mae.hf_dir=... --config.model.qformer.bert_dir=... \
      --config.data.path='/data/shards/{00000..01399}.tar'
  launch/plan.py --config=configs/paper.py:stage1 --devices=64        # memory / FLOPs per chip, no weights

Variants (ARG after the colon):
  stage1                 X-Former: one dual cross-attention block after the Q-Former, MAE mask ratio 0.5
  stage1_blip2           BLIP-2 retrained (CLIP/EVA tower only, no MAE)
  stage1_concat          MAE tokens (projected to the EVA width) appended to the EVA tokens
  stage1_early_xattn     an extra MAE cross-attention after every image cross-attention layer
  stage1_xformer_norec   X-Former without the reconstruction loss (config.loss.weights.rec = 0)
  stage1_per_xattn_layer X-Former with one dual block per image cross-attention layer (placement ablation)
  stage2_opt2.7b         stage 2 with a frozen OPT-2.7B (LM loss only); stage2_opt6.7b with OPT-6.7B

Run length: every variant sets `epochs` (stage 1: 9, stage 2: 1, as the paper) and leaves total_steps
unset: a run takes ceil(epochs * pairs / batch_size) steps, pairs counted in the configured training data
at start-up (`xformer_jax.train.run_length`; 14M for the paper's COCO + VG + CC3M + CC12M + SBU, 75,000
steps at batch 1680), so `--config.batch_size=...` keeps the number of epochs and the cosine schedule
stretches to match. `--config.dataset_size=N` gives the pairs instead of counting them, and
`--config.total_steps=N` sets the length outright.
"""
import ml_collections

from xformer_jax.configs import common

NUM_PAIRS = 14_000_000  # COCO + VG + CC3M + CC12M + SBU (the BLIP-2 paper's pretraining data), for plans
STAGE1_EPOCHS, STAGE2_EPOCHS = 9, 1  # the paper's stage 1 and stage 2
BATCH_SIZE = 1680  # BLIP-2's stage-1 global batch for ViT-g; must divide by data * fsdp (see launch/plan.py)

VARIANTS = ("stage1", "stage1_blip2", "stage1_concat", "stage1_early_xattn", "stage1_xformer_norec",
            "stage1_per_xattn_layer", "stage2_opt2.7b", "stage2_opt6.7b")


def _stage1() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.batch_size = BATCH_SIZE
    config.epochs, config.total_steps = STAGE1_EPOCHS, None  # the length follows the data (run_length)
    config.log_every = 100
    config.checkpoint_every = 2000
    config.eval_every = 0

    config.model.dtype = "bfloat16"  # compute; params stay float32, losses / norms / softmax float32
    # Frozen towers (and at stage 2 the LLM) stored in bf16, as BLIP-2; they train nothing, so they
    # need no float32 master copy. Towers and LLM run as one lax.scan over their layers (scan_layers):
    # the same params and numbers as the unrolled stack, compiled once per stack, which is what keeps the
    # TPU / GPU compiles of these sizes (launch/plan.py --target=...) tractable. No remat in the towers:
    # they run under stop_gradient (the MAE decoder keeps activations of 8 narrow layers only).
    config.model.frozen_dtype = "bfloat16"  # frozen towers stored in half precision, as BLIP-2

    # EVA ViT-g/14 as HF Blip2VisionModel holds it: 39 blocks (BLIP-2 drops EVA's 40th), so the
    # last hidden state is the penultimate EVA layer. Weights: convert the vision tower of
    # Salesforce/blip2-opt-2.7b (same ViT in every BLIP-2 checkpoint) and point hf_dir at it.
    config.model.vision.update(
        hf_dir="",  # e.g. /ckpt/blip2-opt-2.7b (save_pretrained dir of Salesforce/blip2-opt-2.7b)
        kind="eva", hidden_size=1408, num_hidden_layers=39, num_attention_heads=16, intermediate_size=6144,
        image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, feature_layer=-1, remat=False,
        scan_layers=True)
    # MAE ViT-H/14 with its decoder. Weights: facebook/vit-mae-huge (ViTMAEForPreTraining), converted from
    # MAE's *_visualize_* weights (trained on raw pixels; its config.json says norm_pix_loss false).
    # norm_pix_loss is left unset, so the reconstruction target follows the checkpoint's config.json;
    # set it only for weights whose config.json is wrong (e.g. MAE's full pretraining weights, which
    # predict per-patch normalised pixels, converted by hand). layer_norm_eps 1e-12 is what HF's
    # converted ViT-MAE configs carry.
    config.model.mae.update(
        hf_dir="",  # e.g. /ckpt/vit-mae-huge (save_pretrained dir of facebook/vit-mae-huge)
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
        decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
        decoder_intermediate_size=2048, image_size=224, patch_size=14, layer_norm_eps=1e-12, remat=False,
        scan_layers=True)
    # Q-Former = BERT-base with [DEC] (vocab 30523), 32 queries, cross-attention every 2nd layer, BERT's
    # dropout 0.1 on attention probabilities and hidden states (LAVIS trains it so in both stages). Its
    # layers run as a lax.scan over pairs (one with cross-attention, one without; scan_layers): each of its
    # passes compiles one pair instead of 12 layers, which halves the stage-1 compile. Under the scan the
    # compilers keep every pair's activations for the backward pass (peak 72 GiB per v5p chip, 39 per
    # A100, against 25 and 19 unrolled), so each pair is recomputed in the backward pass instead
    # (nothing_saveable: +8% matmul FLOPs per step, peak 25 and 16 GiB). Where memory allows,
    # --config.model.qformer.remat=dots_with_no_batch_dims_saveable keeps the projections (+0.1% FLOPs;
    # 40 and 22 GiB). docs/memory_plan.md has the measurements.
    config.model.qformer.update(
        bert_dir="",  # e.g. /ckpt/bert-base-uncased (save_pretrained dir of bert-base-uncased)
        vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, dec_token_id=30522, cross_attention_freq=2, encoder_width=1408,
        num_query_tokens=32, embed_dim=256, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        remat="nothing_saveable", scan_layers=True)
    config.model.fusion.update(kind="xformer", placement="after_qformer", mask_ratio=0.5, query_heads=12,
                               mae_heads=16, intermediate_size=3072)

    # Data: placeholders. Point data.path at your webdataset shards of the 14M pairs (jpg + txt per
    # sample; brace ranges and globs work, "::" joins several patterns) before training.
    config.data.update(kind="webdataset", path="/path/to/stage1_shards/{00000..01399}.tar", eval_path="",
                       image_size=224, max_len=32, num_workers=8)

    config.optim.update(lr=1e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=5000, b1=0.9, b2=0.98,
                        weight_decay=0.05, grad_clip=0.0, accum_steps=1)
    # Pure FSDP over every device: params, grads and AdamW moments are split along "embed". Fits 16
    # A100-40GB (16.0 GiB per GPU at 105 examples, by the GPU compiler; 19.0 with the Q-Former unrolled)
    # and TPU v5e-64 (16 GiB chips: 9.9 GiB at 26 per chip with the Q-Former unrolled, by libtpu), since the
    # ITM pairs' rows are picked by models/batch_rows.py (docs/memory_plan.md).
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.checkpoint.async_save = True
    return config


# OPT-2.7B / 6.7B as facebook/opt-*: pre-LN, tied head, vocab 50272, 2048 positions.
OPT_SIZES = {"opt2.7b": dict(hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32),
             "opt6.7b": dict(hidden_size=4096, num_hidden_layers=32, ffn_dim=16384, num_attention_heads=32)}


def _stage2(config: ml_collections.ConfigDict, opt_size: dict) -> ml_collections.ConfigDict:
    """BLIP-2's stage 2: frozen OPT in bfloat16, global batch 1920, one epoch (7292 steps), lr 1e-4 with
    2000 warmup steps, MAE unmasked and no reconstruction; start from the stage-1 run (`init_from`)."""
    config.stage = "stage2"
    config.init_from = ""  # the stage-1 workdir
    config.batch_size = 1920
    config.epochs = STAGE2_EPOCHS
    config.model.llm.update(
        # The frozen LLM still backpropagates into its soft prompt: without remat its 32 layers keep every
        # activation (FFN 4x width, attention probabilities) for the backward pass. nothing_saveable keeps
        # only each layer's input and recomputes the layer (one more LLM forward: executed / model FLOPs
        # 1.21 for OPT-6.7B, 1.14 for OPT-2.7B by launch/plan.py's count). OPT-6.7B at batch 120 per
        # A100-40GB, by the GPU compiler: 42.0 GiB peak without it (does not fit 40 GiB), 10.4 GiB with it
        # (docs/memory_plan.md). scan_layers: one compiled layer instead of 32.
        # ("" turns it off from the command line: --config.model.llm.remat="").
        kind="opt", hf_dir="", params_file="", remat="nothing_saveable", scan_layers=True,
        # hf_dir: save_pretrained of facebook/opt-6.7b (or -2.7b)
        vocab_size=50272, max_position_embeddings=2048, pad_token_id=1, bos_token_id=2, eos_token_id=2, **opt_size)
    config.data.update(llm_tokenizer_path="", max_txt_len=32, prompt="")  # tokenizer.json of the same OPT
    config.optim.update(warmup_steps=2000)
    return config


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"configs/paper.py:{arg}: unknown variant; available: {', '.join(VARIANTS)}")
    config = _stage1()
    if arg.startswith("stage2"):
        return _stage2(config, OPT_SIZES[arg.split("_")[1]])
    if arg == "stage1_blip2":
        config.model.fusion.update(kind="blip2")
    elif arg == "stage1_concat":
        config.model.fusion.update(kind="concat")
    elif arg == "stage1_early_xattn":
        config.model.fusion.update(kind="early_xattn")
    elif arg == "stage1_xformer_norec":
        config.loss.weights.rec = 0.0
    elif arg == "stage1_per_xattn_layer":
        config.model.fusion.update(placement="per_xattn_layer")
    return config
