"""`--config=configs/demo.py:VARIANT` on the command line: xformer_jax/configs/demo.py (its docstring
says what each variant is). Print one with every key: python -m xformer_jax.configs.show configs/demo.py"""
from xformer_jax.configs.demo import get_config  # noqa: F401
