"""The synthetic study: `make demo` and the mini paper, on the built-in synthetic scenes (data/synthetic.py).

  cache        a phase's output directory and the spec that made it (reused on a rerun); JSON files; the timer
  scenes       the written dataset: its files, images and the scenes behind them
  pretrain     short MAE / CLIP-style pretraining of small towers and causal-LM pretraining of a small LLM
  parts        the parts every run shares (towers, BPE tokenizer, LLM), pretrained once; the run lengths
  stages       one model: stage 1, stage 2 from its checkpoint, the evaluation
  evaluation   zero-shot VQA and captions against blind answerers and shuffled images; the probes applied
  probes       linear probes of features for what a scene holds
  attributes   the facts (colours, shapes, counts) a generated caption states, checked against its scene
  mini_paper   the paper's fusion variants as config changes, statistics over seeds
  plots        loss curves and image grids
  demo         launch/demo.py's run: the above once, plus held-out ITM, retrieval, reconstruction, pictures, tables
"""
