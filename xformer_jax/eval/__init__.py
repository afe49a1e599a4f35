"""Benchmark scorers that reproduce the official evaluation tools' numbers in pure Python.

They read no network, torch or jax, so scores can be computed (and tested) anywhere:
`vqa` (VQAv2 / OK-VQA), `gqa`, `counting` (GVTBench), `caption` (COCO CIDEr-D / BLEU-4),
`recall` (retrieval R@K with optional ITM re-ranking) and `score.score`, the file-level entry point.
"""
