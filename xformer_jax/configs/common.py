"""The keys every config has, with their defaults; config files override what they need.

`python -m xformer_jax.configs.show configs/paper.py:stage1` prints a config with every key.
"""
import ml_collections
from ml_collections import config_dict

from xformer_jax.data.config import default_data_config
from xformer_jax.factory import sections
from xformer_jax.partitioning import default_mesh_config
from xformer_jax.train.checkpointing import default_checkpoint_config
from xformer_jax.train.optimizer import default_optim_config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "stage1"  # "stage1": ITC + ITM + ITG (+ reconstruction); "stage2": prefix LM through a frozen LLM
    c.init_from = ""  # stage 2: a stage-1 workdir (or its checkpoints/) whose newest weights to start from
    c.stop_after_steps = 0  # end this invocation after N steps with a checkpoint (0 = run to total_steps)
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 64  # global, all processes together
    c.log_every = 50
    c.checkpoint_every = 1000
    c.eval_every = 0  # steps between evaluation hooks (0 = none)
    c.eval_batches = 4
    # A frozen part (tower, MAE decoder, LLM) or the Q-Former's BERT with no weights to load stops a run at
    # start-up unless this says that random weights are meant (the demo's small towers, tests, plans).
    c.allow_random_init = False
    # Set by configs that derive total_steps from a number of epochs over a dataset (configs/paper.py).
    c.epochs = config_dict.placeholder(int)
    c.dataset_size = config_dict.placeholder(int)  # image-text pairs

    # config.model: every field of the model dataclasses at its default (factory/sections.py says which
    # section fills which dataclass; each field's comment in its dataclass documents it), plus:
    c.model = sections.model_defaults()
    c.model.dtype = "float32"  # compute dtype of every part ("bfloat16" on TPU / GPU)
    c.model.frozen_dtype = "float32"  # storage dtype of the frozen towers
    # Weight sources ("" = random init): vision.hf_dir / mae.hf_dir / llm.hf_dir (save_pretrained directories),
    # vision / mae / llm .params_file (convert/pretrained.py save_params), qformer.bert_dir (a BERT directory, or
    # "minilm"). Unset (None) mae.norm_pix_loss and qformer dropouts follow the checkpoint the part is loaded
    # from, or the dataclass default without one; setting them overrides the checkpoint (factory/model.py).
    # MAE's reconstruction target: the *_visualize_* weights that transformers ships were trained on raw
    # pixels (config.json norm_pix_loss false), MAE's full pretraining weights on per-patch normalised ones.
    # ITG's context (itg_context): "image_pass" (LAVIS: the image pass's per-layer query keys / values,
    # before the xformer fusion) or "fused" (Z' as the query prefix; xformer after_qformer only).
    # MAE mask ratios after stage 1 (stage 1 uses fusion.mask_ratio; mae.mask_ratio is MAE's alone, unused here):
    # the paper's MAE sees the whole image at stage 2 (stage2_mask_ratio) and inference
    # (inference_mask_ratio). stage2_reconstruction_weight > 0 needs stage2_mask_ratio > 0.
    # llm: the stage-2 LLM; its keys are those of llm.kind's dataclass (sections.llm_defaults("llama")
    # gives LLaMA's).

    c.loss = ml_collections.ConfigDict()
    c.loss.weights = ml_collections.ConfigDict(dict(itc=1.0, itm=1.0, itg=1.0, rec=1.0))
    c.loss.itc_grad = "global"  # "global": full gradient over the global batch; "local": LAVIS's
    c.loss.use_image_ids = True  # same-image pairs are not negatives (ITC targets, ITM sampling)

    c.data = default_data_config()
    c.optim = default_optim_config()
    c.mesh = default_mesh_config()
    c.checkpoint = default_checkpoint_config()
    # One source of truth for values that several sections read.
    c.data.batch_size = c.get_ref("batch_size")
    c.data.seed = c.get_ref("seed")
    c.checkpoint.every_steps = c.get_ref("checkpoint_every")
    return c
