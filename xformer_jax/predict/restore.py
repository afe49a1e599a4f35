"""A trained run rebuilt for prediction: its config, its model and the params of a checkpoint, and no optimizer."""
from typing import Optional

import ml_collections

from xformer_jax import factory, rundir
from xformer_jax.models import xformer


def restore_run(path: str, config: Optional[ml_collections.ConfigDict] = None
                ) -> tuple[ml_collections.ConfigDict, xformer.Stage1Model, dict]:
    """(config, model, params) of the checkpoint `path` names (a workdir: its newest step; its checkpoints/;
    one step directory): the model rebuilt from the run's config.json (or `config`, already read from it),
    every param read straight onto the sharding the run's mesh gives it."""
    checkpoint = rundir.resolve(path)
    config = config or rundir.read_config(checkpoint.workdir)
    layout = factory.model_layout(config)
    params, _ = rundir.restore_params(checkpoint.directory, layout.param_shardings)
    return config, layout.model, params


def read_stage(path: str, stage: str, why: str) -> ml_collections.ConfigDict:
    """The config of the run `path` names, which must be of `stage` (ValueError naming the run and `why`)."""
    config = rundir.read_config(rundir.resolve(path).workdir)
    if config.stage != stage:
        raise ValueError(f"{path} holds a {config.stage} run; {why}")
    return config
