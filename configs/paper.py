"""`--config=configs/paper.py:VARIANT` on the command line: xformer_jax/configs/paper.py (its docstring
lists the variants). Print one with every key: python -m xformer_jax.configs.show configs/paper.py:stage1"""
from xformer_jax.configs.paper import get_config  # noqa: F401
