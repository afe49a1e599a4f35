"""One model of the study: stage 1 on the pretrained towers, stage 2 on stage 1's checkpoint and the pretrained
LLM, then the evaluation (launch/demo.py runs it once; benchmarks/mini_paper.py per fusion variant and seed,
sharing the parts). Each stage resumes or restores through `loop.train`."""
import copy
import dataclasses
import os
from typing import Sequence

import ml_collections

from xformer_jax import rundir
from xformer_jax.predict.captions import CAPTION_PROMPT
from xformer_jax.proj.synthetic import cache, evaluation
from xformer_jax.proj.synthetic.parts import Budget, Parts
from xformer_jax.train import loop

def stage1_on_towers(config: ml_collections.ConfigDict, towers: dict) -> ml_collections.ConfigDict:
    """A copy of a stage-1 config reading the pretrained towers, checkpointed at its end."""
    config = copy.deepcopy(config)
    for name, path in towers.items():
        config.model[name].params_file = path
    _checkpoint_at_end(config)
    return config


def stage2_after_stage1(config: ml_collections.ConfigDict, stage1: ml_collections.ConfigDict, llm: dict,
                        stage1_dir: str) -> ml_collections.ConfigDict:
    """A stage-2 config with stage 1's model, seed and data, the pretrained LLM, starting from stage1_dir
    (towers and Q-Former come from its checkpoint; config.model's weight sources are cleared so that
    nothing is loaded only to be replaced)."""
    config = copy.deepcopy(config)
    for section in ("vision", "mae", "qformer", "fusion"):
        config.model[section] = copy.deepcopy(stage1.model[section])
    config.model.vision.update(params_file="", hf_dir="")
    config.model.mae.update(params_file="", hf_dir="")
    config.model.qformer.bert_dir = ""
    config.seed = stage1.seed
    config.data.path = stage1.data.path
    config.data.synthetic = copy.deepcopy(stage1.data.synthetic)
    config.model.llm.params_file = llm["llm"]
    config.data.llm_tokenizer_path = llm["tokenizer"]
    config.data.prompt = CAPTION_PROMPT + " "
    config.init_from = stage1_dir
    _checkpoint_at_end(config)
    return config


def _checkpoint_at_end(config: ml_collections.ConfigDict) -> None:
    """One checkpoint, the last step's (what stage 2, evaluation and a rerun read); short runs log and
    warm up proportionally."""
    steps = config.total_steps
    config.checkpoint_every = steps
    config.log_every = min(config.log_every, max(steps // 10, 1))
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(steps // 5, 1))


@dataclasses.dataclass
class Run:
    """One recipe run's outputs."""
    stage1_config: ml_collections.ConfigDict
    stage1_dir: str
    stage2_dir: str
    eval_dir: str  # eval_dir/SPLIT: `evaluation.evaluate`'s files per evaluated split
    stage1_state: object
    scores: dict  # {split: `evaluation.evaluate`'s scores}


def run(stage1: ml_collections.ConfigDict, stage2_base: ml_collections.ConfigDict, parts: Parts, run_dir: str,
        budget: Budget, timer: cache.Timer, splits: Sequence[str] = evaluation.EVAL_SPLITS) -> Run:
    """Stage 1, stage 2 and the evaluation on `splits` of one model under run_dir (stage1/, stage2/, eval/)."""
    stage1_dir, stage2_dir, eval_dir = (os.path.join(run_dir, name) for name in ("stage1", "stage2", "eval"))
    config1 = stage1_on_towers(stage1, parts.towers)
    config2 = stage2_after_stage1(stage2_base, config1, parts.llm, stage1_dir)
    for config, workdir in ((config1, stage1_dir), (config2, stage2_dir)):
        _check_same_run(config, workdir)
    with timer("stage 1"):  # a finished run is restored
        state = _finished(loop.train(config1, stage1_dir, eval_hook=_eval_hook(config1)), config1, stage1_dir)
    with timer("stage 2"):
        _finished(loop.train(config2, stage2_dir, eval_hook=_eval_hook(config2)), config2, stage2_dir)
    with timer("evaluation"):
        scores = {split: evaluation.evaluate(stage2_dir, parts.paths, os.path.join(eval_dir, split), budget, split)
                  for split in splits}
    return Run(config1, stage1_dir, stage2_dir, eval_dir, state, scores)


def _eval_hook(config: ml_collections.ConfigDict):
    """The held-out losses (`eval/...` in metrics.jsonl) every config.eval_every steps, if set."""
    return loop.eval_losses(config, config.eval_batches) if config.eval_every else None


def _finished(state, config: ml_collections.ConfigDict, workdir: str):
    """loop.train returns normally on SIGTERM (preemption) with a checkpoint: stop there, not go on."""
    if int(state.step) < config.total_steps:
        raise SystemExit(f"{workdir}: stopped at step {int(state.step)} of {config.total_steps} (SIGTERM); "
                         "rerun the same command to continue")
    return state


def _check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """loop.train resumes whatever workdir holds: refuse a workdir that a different config trained."""
    path = os.path.join(workdir, rundir.CONFIG_FILE)
    if os.path.exists(path) and cache.as_json(rundir.read_config(workdir)) != cache.as_json(config):
        raise ValueError(f"{path} was written by a different config (other sizes, steps or pretrained parts); "
                         "delete that directory or choose another workdir")
