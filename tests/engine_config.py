"""The tiny config that tests/test_train_engine.py trains, also as a config file for launch/train.py:

  launch/train.py --config=tests/engine_config.py:ROOT --workdir=DIR [--config.KEY=VALUE ...]

ROOT holds the synthetic data (ROOT/data). 4 steps of a 1000-step schedule per invocation
(config.stop_after_steps), a 2x2x2 (data, fsdp, tensor) mesh on 8 devices, no warmup (the first step
already moves the params by ~lr), evaluation every 2 steps on one val batch.
"""
import pathlib

from xformer_jax.configs.tiny import tiny_config


def get_config(root: str = "workdir"):
    config = tiny_config(pathlib.Path(root))  # batch 8, log every step, checkpoint every 2
    # Every run shares one lr schedule, hence one compiled step per mesh (total_steps is a constant of
    # the step), and does 4 steps per invocation unless told otherwise.
    config.total_steps = 1000
    config.stop_after_steps = 4
    config.mesh.update(data=2, fsdp=2, tensor=2)
    config.optim.warmup_steps = 0
    # Adam's first update is lr * g / (|g| + eps): a param whose gradient is at float32 noise level
    # (~1e-6 here: ITC is near-uniform at init) moves by up to lr * noise / eps. The default eps 1e-8
    # turns summation-order noise between meshes into differences of ~lr; 1e-3 keeps them < 1e-6.
    config.optim.eps = 1e-3
    config.eval_every = 2
    config.eval_batches = 1
    return config
