"""The keys every config has, with their defaults; config files override what they need."""
import ml_collections
from ml_collections import config_dict

from xformer_jax.data.config import default_data_config
from xformer_jax.train.checkpointing import default_checkpoint_config
from xformer_jax.train.optimizer import default_optim_config
from xformer_jax.train.partitioning import default_mesh_config


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

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype ("bfloat16" on TPU / GPU)
    c.model.frozen_dtype = "float32"  # storage dtype of the frozen towers
    c.model.itm_shared_image_kv = False  # True: ITM projects image keys / values once (one device only)
    # What ITG's text decoder attends to: "image_pass" (LAVIS: the image pass's per-layer query keys /
    # values, before the xformer fusion) or "fused" (Z' as the query prefix; xformer after_qformer only).
    c.model.itg_context = "image_pass"
    c.model.vision = ml_collections.ConfigDict(dict(hf_dir="", params_file=""))
    # Unset (None) values below follow the checkpoint the part is loaded from (hf_dir / bert_dir), or the
    # model's default without one; setting them overrides the checkpoint (xformer_jax/train/build.py).
    # MAE's reconstruction target: the *_visualize_* weights that transformers ships were trained on raw
    # pixels (config.json norm_pix_loss false), MAE's full pretraining weights on per-patch normalised ones.
    c.model.mae = ml_collections.ConfigDict(dict(hf_dir="", params_file="",
                                                 norm_pix_loss=config_dict.placeholder(bool)))
    # The Q-Former's BERT dropout (transformers' names; bert-base-uncased and LAVIS: 0.1; without a checkpoint 0).
    c.model.qformer = ml_collections.ConfigDict(dict(
        bert_dir="", hidden_dropout_prob=config_dict.placeholder(float),
        attention_probs_dropout_prob=config_dict.placeholder(float)))
    c.model.fusion = ml_collections.ConfigDict()
    c.model.stage2_reconstruction_weight = 0.0  # stage 2: reconstruction off unless > 0
    # MAE mask ratios after stage 1 (stage 1 uses model.fusion.mask_ratio): the paper's MAE sees the whole
    # image at stage 2 and inference. stage2_reconstruction_weight > 0 needs stage2_mask_ratio > 0.
    c.model.stage2_mask_ratio = 0.0
    c.model.inference_mask_ratio = 0.0  # retrieval, stage-2 prompts, generation, exports

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
