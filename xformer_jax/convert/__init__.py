"""Hugging Face checkpoints -> (Flax module, params), with NumPy only, and back.

`from_hf(hf_dir)` reads a directory written by transformers' `save_pretrained` (config.json plus
model.safetensors or a sharded index) and returns a module whose `apply` takes HF input names and
layouts and returns HF output field names. This package knows formats only (it imports the models, nothing
above): `xformer_jax.convert.to_run` turns a whole BLIP-2 directory into a run directory and a component into a
params file, `xformer_jax.convert.to_hf` writes a run's checkpoint back as transformers / xformer_jax.torch
safetensors (launch/convert.py, launch/export.py).
"""
from xformer_jax.convert.hf import LoadReport, SUPPORTED_ARCHITECTURES, from_hf, load_hf
from xformer_jax.convert.mapping import CheckpointMismatch

__all__ = ["from_hf", "load_hf", "LoadReport", "SUPPORTED_ARCHITECTURES", "CheckpointMismatch"]
