"""Train X-Former / BLIP-2: launch/train.py --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Rerunning the same command resumes from the newest checkpoint in DIR/checkpoints. Multi-host: run the
same command on every host; pass --coordinator_address/--num_processes/--process_id (GPU clusters,
or two local processes), or nothing on TPU VMs and SLURM, where JAX finds its peers itself.
"""
import logging
import os

from absl import app, flags

from xformer_jax.configs import cli

FLAGS = flags.FLAGS
CONFIG = cli.define_config("e.g. configs/demo.py:stage1")
flags.DEFINE_string("workdir", None, "Run directory (local or gs://bucket/...): metrics, TensorBoard events, checkpoints.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", None, "Force jax.distributed.initialize() with auto-detection "
                  "(default: only when the environment names a coordinator, TPU pod or SLURM job).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
    import jax
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif FLAGS.distributed or (FLAGS.distributed is None and _cluster_environment()):
        jax.distributed.initialize()


def _cluster_environment() -> bool:
    names = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return any(os.environ.get(n) for n in names if n != "TPU_WORKER_HOSTNAMES") or "," in hosts


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    for name in ("absl", "gcsfs", "fsspec"):  # orbax's per-save and gcsfs's per-file INFO chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    initialize_distributed()
    from xformer_jax.train import loop, preflight
    config = cli.checked(CONFIG.value)
    try:  # the mistakes a user can make in paths, said in one line before any model is built
        config = loop.prepare(config, FLAGS.workdir)
        hook = loop.eval_losses(config, config.eval_batches) if config.eval_every else None
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"FATAL {e}") from None
    try:
        loop.train(config, FLAGS.workdir, eval_hook=hook)
    except preflight.InputError as e:  # the schedule against the counted data
        raise SystemExit(f"FATAL {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse)
