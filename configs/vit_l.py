"""`--config=configs/vit_l.py:VARIANT` on the command line: xformer_jax/configs/vit_l.py (its docstring
lists the variants). Print one with every key: python -m xformer_jax.configs.show configs/vit_l.py:stage1"""
from xformer_jax.configs.vit_l import get_config  # noqa: F401
