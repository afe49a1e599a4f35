"""Data: sources, transforms, tokenizers and the built-in synthetic dataset, on grain.

Entry points: `make_train_iterator`, `make_eval_dataset`, `to_global_batch`, `default_data_config`.
"""
from xformer_jax.data.config import default_data_config
from xformer_jax.data.pipeline import make_eval_dataset, make_tokenizer, make_train_iterator
from xformer_jax.data.sharding import to_global_batch
from xformer_jax.data.tokenizers import LLMTokenizer, QFormerTokenizer, stage2_labels

__all__ = ["default_data_config", "make_train_iterator", "make_eval_dataset", "make_tokenizer", "to_global_batch",
           "QFormerTokenizer", "LLMTokenizer", "stage2_labels"]
