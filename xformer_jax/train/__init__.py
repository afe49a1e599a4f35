"""Training: what the trainer adds to the model the factory builds (xformer_jax.factory) and the weights it
starts from (convert/pretrained.py, config.init_from): the objective, the optimizer, the sharded state and step,
and the loop that runs them with checkpoints, metrics and preemption.

  objective      each stage's loss, top to bottom, from the model's forward (and the model only)
  optimizer      LAVIS learning-rate schedule, AdamW with BLIP-2's weight-decay mask, grad accumulation
  state          TrainState (trainable params + frozen params + opt_state + rng) and its shardings
  steps          the jitted train step (gradient accumulation, clipping, the update)
  loop           make_trainer (factory layout + pretrained weights + state + step) and train (resume, step,
                 log, evaluate, checkpoint, stop); step_metrics reads a step's metrics one step late
  checkpointing  orbax CheckpointManager wrapper (state + grain iterator, topology-agnostic restore)
  metrics        metrics.jsonl (fsync'd), TensorBoard scalars, console progress line
  preemption     SIGTERM guard whose stop decision is agreed across processes
  preflight      every key and path a run reads checked before any model is built
  run_length     the run's length counted from its data (epochs <-> steps)
  startup        what a run says before its first step
"""
