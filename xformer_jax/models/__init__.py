"""Flax modules: vision towers, MAE, Q-Former, fusion, LLMs."""
