"""Hugging Face checkpoints -> (Flax module, params), with NumPy only, and back.

`from_hf(hf_dir)` reads a directory written by transformers' `save_pretrained` (config.json plus
model.safetensors or a sharded index) and returns a module whose `apply` takes HF input names and
layouts and returns HF output field names. The readers, the rename tables and `pretrained` (a config's
pretrained parts, read and merged into the initial params) know formats only: they import the models and nothing
above. Two modules sit higher (tests/test_layers.py): `to_hf` writes a run's checkpoint back as transformers /
xformer_jax.torch safetensors (launch/export.py; it reads the factory), `to_run` turns a whole BLIP-2 directory
into a run directory and a component into a params file (launch/convert.py; it writes a trainer checkpoint).
"""
from xformer_jax.convert.hf import LoadReport, SUPPORTED_ARCHITECTURES, from_hf, load_hf
from xformer_jax.convert.mapping import CheckpointMismatch

__all__ = ["from_hf", "load_hf", "LoadReport", "SUPPORTED_ARCHITECTURES", "CheckpointMismatch"]
