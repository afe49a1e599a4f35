"""Config -> model: the one way down from a config to the model a run trains, predicts with or plans.

  sections      which config.model section fills which model dataclass, read both ways (the defaults)
  model         config.model -> Stage1Config / Stage2Config -> the Linen model and its init
  architecture  a config's sizes completed from its checkpoints, its init_from run and its towers
  layout        the model on the mesh (param shardings) before any weight exists; the frozen parts' dtype

The weights themselves come from convert/ (pretrained.py: a config's pretrained parts) or from a run's
checkpoint (rundir); train/, predict/, convert/to_hf.py and launch/plan.py start here.
"""
from xformer_jax.factory.architecture import with_checkpoint_sizes
from xformer_jax.factory.layout import ModelLayout, model_layout, with_frozen_dtype
from xformer_jax.factory.model import (dtype_of, dummy_batch, init_fn, make_model, model_config, stage1_config,
                                       stage2_config, with_checkpoint_fields, with_part_files)
