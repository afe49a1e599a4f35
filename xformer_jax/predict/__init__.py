"""Prediction with a trained run, written once for launch/evaluate.py, launch/generate.py and
the synthetic study (proj/synthetic). It builds the model through the factory and never imports the trainer.

  restore   a run rebuilt for prediction from its run directory: config, model and params (sharded onto the
            mesh of its config, no optimizer)
  inputs    images read from disk, their evaluation pixels, fixed-size batches (the last one padded, so
            every jitted function compiles once)
  generate  jitted greedy / beam search from inputs_embeds (transformers' tokens)
  captions  Captioner (stage 2: captions and VQA answers with BLIP-2's prompts and decoding) and the batched
            caption / answer predictions in the official result formats
  rankings  Retriever (stage 1: ITC, then ITM re-ranking, as LAVIS) and the rankings of a caption file;
            `eval.recall` scores them
  benchmarks one home per benchmark: its published files read, answered, written in the official result
            format, scored
"""
