"""A stage-1 / stage-2 checkpoint -> config.json + safetensors with transformers' names and layouts.

Two formats:
  hf       the blip2 fusion variant with an EVA tower, as transformers' own classes:
           Blip2ForImageTextRetrieval (stage 1; the Q-Former's ITG head and `temp` have no place there
           and are left out) or Blip2ForConditionalGeneration (stage 2; with `image_token_index`,
           `num_query_tokens` and a generation_config.json that transformers' `generate` needs).
  xformer  every variant: the same names plus the fusion and MAE weights (`tables.stage_model`), read
           by `xformer_jax.torch` (from_pretrained / generate).
"auto" picks hf when the model can be expressed that way, xformer otherwise. Both write the image
processors' settings (preprocessor_config.json for the tower, mae_preprocessor_config.json for an MAE tower)
and, at stage 2, the LLM tokenizer and generation_config.json.

The renames are the import tables inverted (`mapping.flax_to_hf`); towers are written truncated to
the blocks the Q-Former reads (the checkpoint holds no others). No torch here: safetensors are written
with NumPy (`safetensors_write`), float32 or bfloat16, sharded with an index json above a size limit.
"""
import dataclasses
import json
import logging
import re
from typing import Optional

import numpy as np
from flax import traverse_util
from tokenizers import processors

from xformer_jax import factory, rundir, storage
from xformer_jax.convert import mapping, safetensors_write, stage as stage_lib, tables
from xformer_jax.data.tokenizers import LLMTokenizer, load_llm_tokenizer

FORMATS = ("auto", "hf", "xformer")
MAE_PROCESSOR_FILE = "mae_preprocessor_config.json"  # read by xformer_jax.torch.processing
CAPTION_DECODING = {"num_beams": 5, "max_new_tokens": 20, "min_new_tokens": 1}  # predict.captions.Captioner's defaults


@dataclasses.dataclass
class ExportReport:
    out: str
    export_format: str
    architecture: str
    step: int
    files: tuple
    left_out: tuple = ()  # Flax params the format has no place for
    notes: tuple = ()

    def __str__(self) -> str:
        lines = [f"step {self.step} -> {self.out} ({self.architecture}, format {self.export_format}): "
                 f"{', '.join(self.files)}"]
        lines += [f"  left out: {p}" for p in self.left_out]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def hf_format_problems(config) -> list[str]:
    """Why a model cannot be written as transformers' BLIP-2 classes (empty when it can)."""
    problems = []
    if config.fusion.kind != "blip2":
        problems.append(f"fusion {config.fusion.kind!r} has MAE / fusion weights that transformers' BLIP-2 lacks")
    if config.vision.kind != "eva":
        problems.append("its CLIP tower cannot be expressed as Blip2VisionModel (which has no pre-LayerNorm "
                        "(pre_layrnorm), a bias-free patch embedding or separate q/k/v)")
    elif config.vision.num_channels != 3:
        problems.append(f"Blip2VisionModel reads 3 channels, the tower {config.vision.num_channels}")
    llm = getattr(config, "llm", None)
    if llm is not None and llm.word_embed_proj_dim != llm.hidden_size:
        problems.append(f"Blip2ForConditionalGeneration projects the queries to the LLM's hidden_size "
                        f"{llm.hidden_size}, this OPT embeds at word_embed_proj_dim {llm.word_embed_proj_dim}")
    return problems


def resolve_format(config, export_format: str) -> str:
    if export_format not in FORMATS:
        raise ValueError(f"export format {export_format!r} is not one of {FORMATS}")
    problems = hf_format_problems(config)
    if export_format == "auto":
        return "xformer" if problems else "hf"
    if export_format == "hf" and problems:
        raise ValueError("cannot export as transformers' BLIP-2: " + "; ".join(problems)
                         + ". Export with --format=xformer and load it with xformer_jax.torch instead.")
    return export_format


def _tokenizer(config):
    path = config.data.get("llm_tokenizer_path") if "data" in config else None
    if not path or not storage.exists(path):
        return None
    data = config.data
    return LLMTokenizer(path, data.max_txt_len, data.prompt, data.llm_bos_token, data.llm_pad_token)


def image_token(config, vocab_size: int, tokenizer) -> tuple[int, int]:
    """(image token id, rows to add to the LLM's vocabulary) for transformers' BLIP-2 `generate`.

    The id a converted checkpoint came with, else the first id past the tokenizer's vocabulary
    (where Blip2Processor puts the "<image>" token it adds), else one past the LLM's vocabulary.
    Rows past the vocabulary are added as zeros (and the token is suppressed in generation_config.json,
    so generation never picks a token the trained model does not have)."""
    source = (config.get("hf") or {}).get("image_token_index") if "hf" in config else None
    if isinstance(source, int) and 0 <= source < vocab_size:
        return source, 0
    token = tokenizer.tokenizer.get_vocab_size(with_added_tokens=True) if tokenizer is not None else vocab_size
    return token, max(token + 1 - vocab_size, 0)


def _grow_vocabulary(tensors: dict, rows: int, kind: str) -> list[str]:
    names = ["language_model.model.decoder.embed_tokens.weight" if kind == "opt" else
             "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"]
    grown = []
    for name in names:
        if name in tensors:
            table = tensors[name]
            tensors[name] = np.concatenate([table, np.zeros((rows, table.shape[1]), table.dtype)], axis=0)
            grown.append(name)
    return grown


def _write_json(path: str, value: dict) -> None:
    storage.write(path, json.dumps(value, indent=2) + "\n")


def _generation_config(model_config, tokenizer, suppress: Optional[int]) -> dict:
    """Captioner's decoding: its eos (the "\\n" token captions end with) and pad when the run's
    tokenizer is known, else the LLM config's; 5 beams, up to 20 new tokens, at least 1."""
    llm = model_config.llm
    out = {"bos_token_id": llm.bos_token_id,
           "eos_token_id": tokenizer.eos_id if tokenizer is not None else stage_lib._jsonable(llm.eos_token_id),
           "pad_token_id": tokenizer.pad_id if tokenizer is not None else llm.pad_token_id,
           **CAPTION_DECODING}
    if suppress is not None:
        # The added image-token row must not take probability mass: suppressed, then log-softmax again.
        out.update(suppress_tokens=[suppress], renormalize_logits=True)
    return out


def _tokenizer_files(config, out: str, tokenizer, export_format: str, model_config) -> list[str]:
    """tokenizer.json (+ a tokenizer_config.json for AutoTokenizer) and, for hf, Blip2Processor's number of
    image tokens."""
    data = config.data
    fast = load_llm_tokenizer(config.data.llm_tokenizer_path)
    if fast.post_processor is None:  # the run prepends bos itself (LLMTokenizer); transformers' tokenizer must too
        fast.post_processor = processors.TemplateProcessing(
            single=f"{data.llm_bos_token} $A", pair=f"{data.llm_bos_token} $A {data.llm_bos_token} $B:1",
            special_tokens=[(data.llm_bos_token, tokenizer.bos_id)])
    storage.write(storage.join(out, "tokenizer.json"), fast.to_str(pretty=True))
    eos = model_config.llm.eos_token_id
    eos = tokenizer.tokenizer.id_to_token(eos if isinstance(eos, int) else eos[0]) or data.llm_bos_token
    _write_json(storage.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": data.llm_bos_token, "eos_token": eos,
        "pad_token": data.llm_pad_token, "padding_side": "left"})
    files = ["tokenizer.json", "tokenizer_config.json"]
    if export_format == "hf":
        _write_json(storage.join(out, "processor_config.json"), {
            "processor_class": "Blip2Processor", "num_query_tokens": model_config.qformer.num_query_tokens})
        files.append("processor_config.json")
    return files


def _image_processor(side: int, mean, std, **extra) -> dict:
    """transformers' BlipImageProcessor doing what the run's evaluation transform does (data/transforms.py):
    RGB, a bicubic resize of the whole image to side x side, /255, normalised per channel."""
    return {"image_processor_type": "BlipImageProcessor", "do_resize": True, "size": {"height": side, "width": side},
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(mean), "image_std": list(std), "do_convert_rgb": True, **extra}


def _image_processor_files(config, out: str, export_format: str, model_config) -> list[str]:
    """preprocessor_config.json (the tower's pixel_values: CLIP / EVA normalisation at its side) and, for a
    model with an MAE tower, MAE_PROCESSOR_FILE (mae_pixel_values: ImageNet normalisation at the MAE's side),
    so that a PyTorch user feeds the exported model what the run was trained on (xformer_jax.torch's
    XFormerProcessor reads both)."""
    data = config.data
    extra = {"processor_class": "Blip2Processor"} if export_format == "hf" else {}
    _write_json(storage.join(out, "preprocessor_config.json"),
                _image_processor(model_config.vision.image_size, data.clip_mean, data.clip_std, **extra))
    files = ["preprocessor_config.json"]
    if model_config.mae is not None:
        _write_json(storage.join(out, MAE_PROCESSOR_FILE),
                    _image_processor(model_config.mae.image_size, data.mae_mean, data.mae_std))
        files.append(MAE_PROCESSOR_FILE)
    return files


def export(source: str, out: str, *, export_format: str = "auto", dtype: str = "float32",
           max_shard_size="5GB") -> ExportReport:
    """Export the checkpoint `source` (a workdir: its newest step; its checkpoints/; or one step
    directory) to the directory `out`. See the module docstring for the formats."""
    safetensors_write.check_dtype(dtype)
    safetensors_write.parse_size(max_shard_size)
    if export_format not in FORMATS:
        raise ValueError(f"export format {export_format!r} is not one of {FORMATS}")
    params, checkpoint = rundir.restore_params(source)
    config, step = rundir.read_config(checkpoint.workdir), checkpoint.step
    model_config = factory.model_config(config)
    export_format = resolve_format(model_config, export_format)
    stage = stage_lib.stage_of(model_config)
    llm_kind = stage_lib.llm_kind(model_config.llm) if stage == "stage2" else None
    table = tables.stage_model(model_config.vision.kind, (llm_kind,) if llm_kind else ())
    flat = traverse_util.flatten_dict(params, sep="/")
    # transformers' BLIP-2 has no ITG head nor ITC temperature; at stage 2 the temperature is unused.
    drop = (r"qformer/temp", r"qformer/lm_head/.*") if export_format == "hf" else (
        (r"qformer/temp",) if stage == "stage2" else ())
    left_out = tuple(sorted(p for p in flat if any(re.fullmatch(d, p) for d in drop)))
    tensors = mapping.flax_to_hf(flat, table, tables.stage_model_ndims(model_config.vision.kind), drop)
    notes = []
    if export_format == "hf" and model_config.qformer.vision_layer_norm_eps != model_config.vision.layer_norm_eps:
        notes.append(f"ln_vision's eps {model_config.qformer.vision_layer_norm_eps} becomes Blip2VisionModel's "
                     f"post_layernorm eps {model_config.vision.layer_norm_eps} (the tower's): outputs differ slightly")
    tokenizer = _tokenizer(config) if stage == "stage2" else None
    token_id, vocab_size, suppress = None, None, None
    if stage == "stage2" and export_format == "hf":
        vocab_size = model_config.llm.vocab_size
        token_id, rows = image_token(config, vocab_size, tokenizer)
        if rows:
            grown = _grow_vocabulary(tensors, rows, llm_kind)
            vocab_size += rows
            suppress = token_id
            notes.append(f"image token {token_id} is past the LLM's vocabulary: {', '.join(grown)} grew by {rows} zero "
                         "row(s); generation_config.json suppresses the token and renormalises, so decoding sees the "
                         "trained vocabulary only")
        else:
            notes.append(f"image token id {token_id}")
    elif export_format == "hf" and "hf" in config:  # a converted retrieval checkpoint keeps its image tokens
        token_id = config.hf.get("image_token_index")
    hf_config = stage_lib.hf_config(model_config, export_format, dtype=dtype, image_token_index=token_id,
                                    vocab_size=vocab_size)
    files = safetensors_write.save(out, {name: tensors[name] for name in sorted(tensors)}, max_shard_size, dtype)
    _write_json(storage.join(out, "config.json"), hf_config)
    files.append("config.json")
    files += _image_processor_files(config, out, export_format, model_config)
    if stage == "stage2":
        _write_json(storage.join(out, "generation_config.json"), _generation_config(model_config, tokenizer, suppress))
        files.append("generation_config.json")
        if tokenizer is not None:
            files += _tokenizer_files(config, out, tokenizer, export_format, model_config)
        else:
            notes.append("the run names no LLM tokenizer (config.data.llm_tokenizer_path): none written")
    if model_config.mae is not None and model_config.inference_mask_ratio > 0:
        notes.append(f"config.model.inference_mask_ratio={model_config.inference_mask_ratio}: inference masks "
                     "the MAE input at that ratio, keeping the first patches (as the JAX model does)")
    logging.info("exported %s -> %s", source, out)
    return ExportReport(storage.absolute(out), export_format, hf_config["architectures"][0], step, tuple(files),
                        left_out, tuple(notes))
