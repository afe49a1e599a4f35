"""configs/paper.py's stage-1 / stage-2 setups at a size one accelerator trains (benchmarks/gpu_report.py).

CLIP ViT-L/14 at 224 px (24 layers, width 1024, penultimate-layer features), MAE ViT-L/16 with its
8-layer, 512-wide decoder, the paper's BERT-base Q-Former and dual block, and for stage 2 an
OPT-1.3B-shaped frozen LLM (24 layers, width 2048); bfloat16 as the paper configs.

  launch/train.py --config=xformer_jax/configs/vit_l.py:stage1 --workdir=DIR ...
"""
import ml_collections

from xformer_jax.configs import paper

VARIANTS = {"stage1": "stage1", "stage2": "stage2_opt2.7b"}  # this file's variant -> configs/paper.py's
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32)


def get_config(arg: str = "stage1") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"xformer_jax/configs/vit_l.py:{arg}: unknown variant; available: {', '.join(VARIANTS)}")
    config = paper.get_config(VARIANTS[arg])
    config.model.vision.update(kind="clip", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, image_size=224, patch_size=14, hidden_act="quick_gelu",
                               layer_norm_eps=1e-5, feature_layer=-2)
    config.model.mae.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
                            decoder_intermediate_size=2048, image_size=224, patch_size=16)
    config.model.qformer.encoder_width = 1024
    if arg == "stage2":
        config.model.llm.update(**OPT_1_3B)
    return config
