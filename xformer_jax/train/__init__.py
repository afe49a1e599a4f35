"""Sharded training engine: mesh and logical axis rules, train state, optimizer, checkpoints, metrics.

The modules here know nothing about the model; they take a Linen `init`, a loss-and-gradient
function and ConfigDicts (`config.mesh`, `config.optim`, `config.checkpoint`):

  partitioning   make_mesh, logical axis rules, param / batch shardings, sharded init
  optimizer      LAVIS learning-rate schedule, AdamW with BLIP-2's weight-decay mask, grad accumulation
  state          TrainState (trainable params + frozen params + opt_state + rng) and its shardings
  checkpointing  orbax CheckpointManager wrapper (state + grain iterator, topology-agnostic restore)
  metrics        metrics.jsonl (fsync'd), TensorBoard scalars, console progress line
  preemption     SIGTERM guard whose stop decision is agreed across processes
"""
