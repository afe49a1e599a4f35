"""Tiny files laid out exactly as their publishers ship them, for the tests of what users feed in:
facebook/opt-*'s tokenizer (vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, no
tokenizer.json) and PyTorch weights as the older hub repositories hold them (pytorch_model.bin, sharded with
pytorch_model.bin.index.json; facebook/opt-* with the bare OPTModel's `decoder.*` keys)."""
import json
import os

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from xformer_jax.data import bpe


def opt_tokenizer(directory, texts, vocab_size: int = 400) -> str:
    """A byte-level BPE trained on `texts` (OPT's special tokens <s> 0, <pad> 1, </s> 2, <unk> 3), written as
    the facebook/opt-* repositories ship theirs: GPT2Tokenizer files, bos = eos = unk = </s>, pad <pad>."""
    os.makedirs(directory, exist_ok=True)
    trained = bpe.train_bpe(texts, os.path.join(directory, "bpe.json"), vocab_size)
    Tokenizer.from_file(trained).model.save(str(directory))  # vocab.json + merges.txt
    os.remove(trained)
    settings = {"add_bos_token": True, "add_prefix_space": False, "bos_token": "</s>", "eos_token": "</s>",
                "errors": "replace", "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
                "tokenizer_class": "GPT2Tokenizer", "unk_token": "</s>"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "</s>"}, f, indent=2)
    return str(directory)


def torch_checkpoint(model, directory, *, bare_base_model: bool = False, shards: int = 1,
                     legacy_layer_norm: bool = False) -> str:
    """config.json + the state dict as torch.save wrote it for transformers 4.x's save_pretrained with
    safe_serialization=False: one pytorch_model.bin, or `shards` pytorch_model-0000k-of-0000n.bin files and
    their index. `bare_base_model`: the keys of the model's base model without its prefix and no LM head
    (facebook/opt-*); `legacy_layer_norm`: LayerNorm gamma / beta (the original bert-base-uncased)."""
    # save_pretrained writes the checkpoint names (transformers 5 renames some modules in memory), then
    # its safetensors file becomes the pickle.
    model.save_pretrained(str(directory))
    state = load_file(os.path.join(directory, "model.safetensors"))
    os.remove(os.path.join(directory, "model.safetensors"))
    if bare_base_model:
        prefix = model.base_model_prefix + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if legacy_layer_norm:
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}
    if shards == 1:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
        return str(directory)
    names = sorted(state)
    weight_map = {}
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[k::shards]}
        torch.save(part, os.path.join(directory, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                   "weight_map": weight_map}, f, indent=2)
    return str(directory)
