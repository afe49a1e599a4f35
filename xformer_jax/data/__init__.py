"""Data: sources, transforms, tokenizers and the built-in synthetic dataset."""
