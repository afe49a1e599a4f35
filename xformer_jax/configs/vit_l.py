"""X-Former at a size one node trains: configs/paper.py's recipe with CLIP ViT-L/14 and MAE ViT-L/16.

  launch/train.py --config=configs/vit_l.py:stage1 --workdir=DIR \
      --config.model.vision.hf_dir=/ckpt/clip-vit-large-patch14 --config.model.mae.hf_dir=/ckpt/vit-mae-large \
      --config.model.qformer.bert_dir=/ckpt/bert-base-uncased --config.data.path=... --config.data.image_root=...
  launch/train.py --config=configs/vit_l.py:stage2 --workdir=DIR2 --config.init_from=DIR \
      --config.model.llm.hf_dir=/ckpt/opt-2.7b --config.data.path=... --config.data.image_root=...

Variants (ARG after the colon):
  stage1          CLIP ViT-L/14 at 224 px (openai/clip-vit-large-patch14: 24 layers, width 1024, penultimate-layer
                  features), MAE ViT-L/16 with its 8-layer, 512-wide decoder (facebook/vit-mae-large), the paper's
                  BERT-base Q-Former and dual block; batch 800 (LAVIS's BLIP-2 ViT-L recipe: 100 per GPU on 8)
  stage2          stage 2 with a frozen OPT-2.7B (facebook/opt-2.7b)
  stage2_opt1.3b  stage 2 with an OPT-1.3B-shaped LLM (24 layers, width 2048): benchmarks/gpu_report.py's
Everything else (bfloat16, epochs over the counted pairs, lr schedule, dropout, the scanned Q-Former) is
configs/paper.py's. A part's sizes also follow its checkpoint's config.json (factory/architecture.py).
"""
import ml_collections

from xformer_jax.configs import paper

VARIANTS = {"stage1": "stage1", "stage2": "stage2_opt2.7b", "stage2_opt1.3b": "stage2_opt2.7b"}  # -> paper's
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32)
BATCH_SIZE = 800


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"configs/vit_l.py:{arg}: unknown variant; available: {', '.join(VARIANTS)}")
    config = paper.get_config(VARIANTS[arg])
    if arg == "stage1":
        config.batch_size = BATCH_SIZE
    config.model.vision.update(kind="clip", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, image_size=224, patch_size=14, hidden_act="quick_gelu",
                               layer_norm_eps=1e-5, feature_layer=-2)
    config.model.mae.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
                            decoder_intermediate_size=2048, image_size=224, patch_size=16)
    config.model.qformer.encoder_width = 1024
    if arg == "stage2_opt1.3b":
        config.model.llm.update(**OPT_1_3B)
    return config
