"""Conversion both ways: HF BLIP-2 -> workdir -> export -> transformers, and X-Former runs -> xformer_jax.torch.

References: tiny random transformers BLIP-2 models (round trips: equal tensors, logits of the round-tripped
model and of the JAX model within 1e-4), and the JAX model itself for the X-Former variants (logits,
ITC / ITM outputs and the greedy caption of `Captioner`).
"""
import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

import hf_models
from launch import convert as convert_cli
from launch import export as export_cli
from xformer_jax import rundir
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.convert import pretrained, safetensors_io, to_hf
from xformer_jax.data import bpe, synthetic
from xformer_jax.predict.captions import Captioner
from xformer_jax.predict.restore import restore_run
from xformer_jax.torch import (XFormerForConditionalGeneration, XFormerForImageTextRetrieval, XFormerProcessor,
                               from_pretrained)
from xformer_jax.train import checkpointing, loop

TOL = 1e-4
IMAGE_TOKEN = 63  # the last row of the tiny OPT's 64-token vocabulary
rng = np.random.default_rng(0)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def t(array, dtype=None):
    out = torch.from_numpy(np.asarray(array))
    return out if dtype is None else out.to(dtype)


def load_hf(cls, directory):
    model, info = cls.from_pretrained(str(directory), output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and not info["mismatched_keys"], info
    return model.eval()


def assert_same_tensors(reference, exported):
    """Every tensor equal (the reference's rounded to the exported dtype)."""
    a, b = reference.state_dict(), exported.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(b[key], a[key].to(b[key].dtype)), key


def convert_and_export(hf_dir, tmp_path, *extra):
    workdir, out = tmp_path / "workdir", tmp_path / "export"
    report = convert_cli.main([f"--hf={hf_dir}", f"--out={workdir}"])
    assert report.stage and (workdir / "config.json").exists() and (workdir / "checkpoints" / "0").is_dir()
    export_cli.main([f"--workdir={workdir}", f"--out={out}", *extra])
    return workdir, out


# ------------------------------------------------------------------------------------------------
# transformers BLIP-2 round trips
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blip2_generation(tmp_path_factory):
    """A tiny Blip2ForConditionalGeneration (EVA tower, 2-layer Q-Former, 2-layer OPT), converted and exported."""
    config = T.Blip2Config(vision_config=hf_models.tiny_vision_kwargs(num_hidden_layers=2),
                           qformer_config=hf_models.tiny_qformer_kwargs(num_hidden_layers=2, encoder_hidden_size=32),
                           text_config=hf_models.opt_config().to_dict(), num_query_tokens=4,
                           image_token_index=IMAGE_TOKEN, attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(8)
        reference = hf_models.randomize(T.Blip2ForConditionalGeneration(config), seed=8, std=0.2)
    root = tmp_path_factory.mktemp("blip2_generation")
    hf_dir = hf_models.save(reference, root / "hf")
    workdir, out = convert_and_export(hf_dir, root)
    return reference, workdir, out


def stage2_logits(model):
    """Jitted (params, pixels, ids, mask[, mae pixels]) -> the JAX model's LLM logits over [queries; ids]."""
    def logits(m, pixels, ids, mask, mae_pixels):
        embeds, full_mask = m.prompt_embeddings(pixels, ids, mask, mae_pixels)
        return m.llm(inputs_embeds=embeds, attention_mask=full_mask)["logits"]
    return jax.jit(lambda params, pixels, ids, mask, mae_pixels=None: model.apply(
        {"params": params}, pixels, ids, mask, mae_pixels, method=logits))


def generation_inputs(batch=2):
    pixels = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    text = np.array([[2, 17, 30, 5, 44], [2, 9, 51, 12, 3]], np.int64)[:batch]
    ids = np.concatenate([np.full((batch, 4), IMAGE_TOKEN), text], axis=1)
    return pixels, text, ids


def test_blip2_generation_round_trip_loads_in_transformers_with_equal_tensors_and_logits(blip2_generation):
    reference, workdir, out = blip2_generation
    exported = load_hf(T.Blip2ForConditionalGeneration, out)
    assert_same_tensors(reference, exported)
    config = json.load(open(out / "config.json"))
    assert (config["image_token_index"], config["num_query_tokens"]) == (IMAGE_TOKEN, 4)
    pixels, _, ids = generation_inputs()
    with torch.no_grad():
        expected = reference(pixel_values=t(pixels), input_ids=t(ids)).logits.numpy()
        got = exported(pixel_values=t(pixels), input_ids=t(ids)).logits.numpy()
    assert max_diff(got, expected) < TOL
    generation = T.GenerationConfig.from_pretrained(str(out))
    tokens = exported.generate(pixel_values=t(pixels), input_ids=t(ids), generation_config=generation,
                               num_beams=1, max_new_tokens=4)
    assert tokens.shape[0] == 2 and (tokens[:, :ids.shape[1]] == t(ids)).all()


def test_converted_blip2_workdir_restores_and_matches_transformers(blip2_generation):
    """The workdir convert writes is what evaluation restores: its JAX logits equal transformers'."""
    reference, workdir, out = blip2_generation
    config = json.load(open(workdir / "config.json"))
    assert config["stage"] == "stage2" and config["model"]["fusion"]["kind"] == "blip2"
    assert config["hf"]["image_token_index"] == IMAGE_TOKEN
    _, model, params = restore_run(str(workdir))  # what evaluation restores: params only, sharded
    init_from, _ = rundir.restore_params(str(workdir))  # what config.init_from reads: host arrays
    np.testing.assert_array_equal(np.asarray(init_from["llm_proj"]["kernel"]), np.asarray(params["llm_proj"]["kernel"]))
    pixels, text, ids = generation_inputs()
    logits = stage2_logits(model)(params, pixels, text, np.ones_like(text))
    with torch.no_grad():
        expected = reference(pixel_values=t(pixels), input_ids=t(ids)).logits.numpy()
    assert max_diff(logits, expected) < TOL
    # xformer_jax.torch reads transformers' layout too (EVA tower, no fusion).
    ours = from_pretrained(str(out))
    assert isinstance(ours, XFormerForConditionalGeneration)
    with torch.no_grad():
        assert max_diff(ours(t(pixels), t(text)), expected) < TOL


def test_sharded_bfloat16_export(blip2_generation, tmp_path):
    reference, workdir, _ = blip2_generation
    report = to_hf.export(str(workdir / "checkpoints" / "0"), str(tmp_path), dtype="bfloat16",
                               max_shard_size="40KB")
    index = json.load(open(tmp_path / safetensors_io.INDEX_FILE))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and set(shards) <= set(report.files) and report.step == 0
    data_bytes = [os.path.getsize(tmp_path / s) - safetensors_io.read_header(str(tmp_path / s))[1] for s in shards]
    assert index["metadata"]["total_size"] == sum(data_bytes)
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    exported = load_hf(T.Blip2ForConditionalGeneration, tmp_path)
    assert exported.language_projection.weight.dtype == torch.bfloat16
    assert_same_tensors(reference, exported)


def test_blip2_retrieval_round_trip(tmp_path):
    reference = hf_models.blip2_retrieval()
    hf_dir = hf_models.save(reference, tmp_path / "hf")
    _, out = convert_and_export(hf_dir, tmp_path)
    exported = load_hf(T.Blip2ForImageTextRetrieval, out)
    assert_same_tensors(reference, exported)
    pixels = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    ids = np.array([[1, 17, 45, 9, 88, 2], [1, 61, 5, 2, 0, 0], [1, 33, 2, 0, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    ours = from_pretrained(str(out))
    assert isinstance(ours, XFormerForImageTextRetrieval)
    for itm in (True, False):
        with torch.no_grad():
            expected = reference(pixel_values=t(pixels), input_ids=t(ids), attention_mask=t(mask),
                                 use_image_text_matching_head=itm)
            got = exported(pixel_values=t(pixels), input_ids=t(ids), attention_mask=t(mask),
                           use_image_text_matching_head=itm)
            mine = ours(t(pixels), t(ids), t(mask), use_image_text_matching_head=itm)
        for name in ("logits_per_image", "logits_per_text"):
            assert max_diff(getattr(got, name), getattr(expected, name)) < TOL, name
            assert max_diff(mine[name], getattr(expected, name)) < TOL, name


# ------------------------------------------------------------------------------------------------
# X-Former variants -> xformer_jax.torch
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    """A tiny X-Former (xformer fusion after the Q-Former, CLIP tower) trained 2 stage-2 steps, exported."""
    root = tmp_path_factory.mktemp("xformer_stage2")
    paths = synthetic.write_dataset(root / "data", num_train=48, num_val=8, num_test=8, image_size=64)
    texts = [e["caption"] for e in json.load(open(paths["caption_train"]))]
    tokenizer = bpe.train_bpe(texts + ["a photo of"], str(root / "tokenizer.json"), 400)
    config = tiny_stage2_config(root, tokenizer)
    config.total_steps, config.checkpoint_every = 2, 2
    loop.train(config, str(root / "run"))
    report = to_hf.export(str(root / "run"), str(root / "export"))
    return root, report


def test_xformer_stage2_export_matches_the_jax_model(stage2_run):
    root, report = stage2_run
    assert report.export_format == "xformer" and report.left_out == ("qformer/temp",)
    model = from_pretrained(str(root / "export"))
    assert isinstance(model, XFormerForConditionalGeneration) and model.fusion_kind == "xformer"
    captioner = Captioner.from_workdir(str(root / "run"), num_beams=1, max_new_tokens=8)
    images = [Image.open(p) for p in sorted((root / "data" / "images" / "val").iterdir())[:2]]
    pixels, mae_pixels = captioner.pixels(images)
    ids, mask = captioner.prompt_ids(["a photo of", "a"])  # left-padded, as Captioner feeds them
    expected = stage2_logits(captioner.model)(captioner.params, pixels, ids, mask, mae_pixels)
    with torch.no_grad():
        got = model(t(pixels), t(ids, torch.long), t(mask, torch.long), t(mae_pixels))
    assert max_diff(got, expected) < TOL

    caption = captioner.caption(images[:1])[0]
    ids, mask = captioner.prompt_ids(["a photo of"])
    tokens = model.generate(t(pixels[:1]), t(ids, torch.long), t(mask, torch.long), t(mae_pixels[:1]),
                            num_beams=1, max_new_tokens=8)
    assert f"a photo of {captioner._decode(tokens[0].numpy())}".strip() == caption
    settings = model.language_model.generation_config  # the export's generation_config.json: Captioner's decoding
    assert (settings.eos_token_id, settings.pad_token_id, settings.num_beams, settings.max_new_tokens) == (
        captioner.tokenizer.eos_id, captioner.tokenizer.pad_id, 5, 20)


REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_snippet(marker: str, replacements: dict) -> str:
    """README's python block holding `marker`, with its paths replaced."""
    readme = open(os.path.join(REPO, "README.md")).read()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if marker in block)
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    return code


def test_readme_snippet_runs_on_the_xformer_export_with_the_runs_image_settings(stage2_run, capsys):
    """README's export snippet as written (paths aside): XFormerProcessor feeds the exported model the
    pixels, MAE pixels and prompt ids the JAX run feeds itself, and generate's caption is the run's."""
    root, report = stage2_run
    assert {"preprocessor_config.json", to_hf.MAE_PROCESSOR_FILE} <= set(report.files)
    image_path = sorted((root / "data" / "images" / "val").iterdir())[0]
    captioner = Captioner.from_workdir(str(root / "run"))  # the export's decoding: 5 beams, up to 20 tokens
    processor = XFormerProcessor.from_pretrained(str(root / "export"))
    inputs = processor(images=Image.open(image_path), text="a photo of")
    pixels, mae_pixels = captioner.pixels([Image.open(image_path)])
    ids, _ = captioner.prompt_ids(["a photo of"])
    assert max_diff(inputs["pixel_values"], pixels) < 1e-5 and max_diff(inputs["mae_pixel_values"], mae_pixels) < 1e-5
    assert inputs["input_ids"].tolist() == ids.tolist()
    exec(readme_snippet("XFormerProcessor.from_pretrained", {
        "export/demo_stage2": str(root / "export"),
        "workdir/demo/data/images/test/test_000000.png": str(image_path)}), {})
    printed = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"a photo of {printed[0].strip()}" == captioner.caption([Image.open(image_path)])[0]


def test_blip2_run_exports_for_transformers_processor_and_generate(stage2_run, tmp_path):
    """A blip2-fusion run with an EVA tower (random, step 0) as transformers' Blip2ForConditionalGeneration:
    Blip2Processor builds the run's inputs ([image tokens; bos; prompt], its pixels), and `generate` with
    the exported generation_config gives Captioner's caption (the tiny vocabulary has no spare row: the
    image token's row is added and kept out of decoding)."""
    root, _ = stage2_run
    config = tiny_stage2_config(root, str(root / "tokenizer.json"), "blip2")
    config.model.vision.update(kind="eva", hidden_act="gelu", layer_norm_eps=1e-6, feature_layer=-2)
    config.model.qformer.vision_layer_norm_eps = 1e-6
    trainer = loop.make_trainer(config, load_pretrained=False)
    rundir.write_config(config, str(tmp_path / "run"))
    checkpoints = checkpointing.Checkpointer(str(tmp_path / "run"), config.checkpoint)
    checkpoints.save(0, trainer.state, force=True)
    checkpoints.close()
    report = to_hf.export(str(tmp_path / "run"), str(tmp_path / "export"))
    assert report.export_format == "hf" and "processor_config.json" in report.files
    model = load_hf(T.Blip2ForConditionalGeneration, tmp_path / "export")
    processor = T.Blip2Processor.from_pretrained(str(tmp_path / "export"))
    captioner = Captioner.from_workdir(str(tmp_path / "run"), num_beams=1, max_new_tokens=6)
    image = Image.open(sorted((root / "data" / "images" / "val").iterdir())[0])
    inputs = processor(images=image, text="a photo of", return_tensors="pt")
    pixels, _ = captioner.pixels([image])
    ids, _ = captioner.prompt_ids(["a photo of"])
    token = model.config.image_token_index
    assert inputs["input_ids"].tolist() == [[token] * 4 + ids[0].tolist()]
    assert max_diff(inputs["pixel_values"], pixels) < 1e-5
    generation = T.GenerationConfig.from_pretrained(str(tmp_path / "export"))
    tokens = model.generate(**inputs, generation_config=generation, num_beams=1, max_new_tokens=6)
    new = tokens[0, inputs["input_ids"].shape[1]:].numpy()
    assert f"a photo of {captioner._decode(new)}".strip() == captioner.caption([image])[0]
    exec(readme_snippet("Blip2Processor.from_pretrained", {  # README's snippet, as written but for its paths
        '"export/blip2_stage2"': repr(str(tmp_path / "export")),
        "workdir/demo/data/images/test/test_000000.png": str(sorted((root / "data" / "images" / "val").iterdir())[0])}),
        {})


@pytest.fixture(scope="module")
def stage1_per_layer(tmp_path_factory):
    """A tiny stage-1 X-Former with a dual cross-attention after every cross-attention layer (random
    init, checkpoint at step 0)."""
    root = tmp_path_factory.mktemp("xformer_stage1")
    config = tiny_config(root, "xformer", "per_xattn_layer")
    trainer = loop.make_trainer(config, load_pretrained=False)
    # The MAE gates start at zero (M' = M); random gates make the MAE blocks count in the comparison.
    params = {k: v if not k.startswith("duals_") else {**v, "mae_gate": rng.normal(size=v["mae_gate"].shape)
                                                       .astype(np.float32)}
              for k, v in trainer.state.params.items()}
    trainer.state = trainer.state.replace(params=params)
    rundir.write_config(config, str(root))
    checkpoints = checkpointing.Checkpointer(str(root), config.checkpoint)
    checkpoints.save(0, trainer.state, force=True)
    checkpoints.close()
    return root, trainer


def test_xformer_stage1_per_layer_fusion_matches_the_jax_model(stage1_per_layer):
    root, trainer = stage1_per_layer
    to_hf.export(str(root / "checkpoints"), str(root / "export"))
    model = from_pretrained(str(root / "export"))
    assert isinstance(model, XFormerForImageTextRetrieval) and len(model.duals) == 1
    params = {**trainer.state.params, **trainer.state.frozen}
    jax_model = trainer.model
    pixels, mae_pixels = (rng.normal(size=(2, 3, 64, 64)).astype(np.float32) for _ in range(2))
    ids = rng.integers(1000, 30000, size=(2, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0

    def reference(m, pixels, ids, mask, mae_pixels):
        """ITC embeddings as retrieval computes them, ITM logits of the paired rows; MAE unmasked."""
        image_embeds, text_embeds = m.retrieval_embeddings(pixels, ids, mask, mae_pixels)
        images = m.encode_images(pixels, mae_pixels, mask_ratio=0.0)
        return image_embeds, text_embeds, m.itm_logits(images["clip"], images["mae"], ids, mask)
    image_embeds, text_embeds, itm_logits = jax.jit(lambda p, *a: jax_model.apply({"params": p}, *a, method=reference))(
        params, pixels, ids, mask, mae_pixels)
    with torch.no_grad():
        itc = model(t(pixels), t(ids, torch.long), t(mask, torch.long), t(mae_pixels))
        got_itm = model(t(pixels), t(ids, torch.long), t(mask, torch.long), t(mae_pixels),
                        use_image_text_matching_head=True)["logits_per_image"]
    assert max_diff(itc["image_embeds"], image_embeds) < TOL and max_diff(itc["text_embeds"], text_embeds) < TOL
    assert max_diff(got_itm, itm_logits) < TOL


def test_component_directories_become_params_files_and_config_keys(tmp_path):
    from flax import traverse_util
    from xformer_jax.convert import from_hf

    clip_dir = hf_models.save(hf_models.clip_vision(), tmp_path / "clip")
    report = convert_cli.main([f"--hf={clip_dir}", f"--out={tmp_path / 'parts'}"])
    params_file = str(tmp_path / "parts" / "vision.msgpack")
    assert f"--config.model.vision.params_file={params_file}" in report.config_keys
    assert {"--config.model.vision.kind=clip", "--config.model.vision.hidden_size=32"} <= set(report.config_keys)
    saved = traverse_util.flatten_dict(pretrained.load_params(params_file, "params_file"))
    expected = traverse_util.flatten_dict(from_hf(clip_dir)[1])
    assert saved.keys() == expected.keys() and all(np.array_equal(saved[k], expected[k]) for k in saved)
    bert_dir = hf_models.save(hf_models.bert(), tmp_path / "bert")
    report = convert_cli.main([f"--hf={bert_dir}", f"--out={tmp_path / 'parts'}"])
    assert f"--config.model.qformer.bert_dir={bert_dir}" in report.config_keys
    assert sorted(os.listdir(tmp_path / "parts")) == ["vision.json", "vision.msgpack"]


# ------------------------------------------------------------------------------------------------
# Error paths
# ------------------------------------------------------------------------------------------------

def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(SystemExit, match=r"GPT2LMHeadModel.*not supported; supported: .*Blip2ForConditionalGeneration"):
        convert_cli.main([f"--hf={tmp_path}", f"--out={tmp_path / 'out'}"])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*nowhere"):
        export_cli.main([f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path / 'out'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"neither a workdir \(with checkpoints/\)"):
        export_cli.main([f"--workdir={tmp_path / 'empty'}", f"--out={tmp_path / 'out'}"])


def test_bad_dtype_format_and_shard_size_are_named(stage1_per_layer, tmp_path):
    root, _ = stage1_per_layer
    with pytest.raises(SystemExit, match=r"dtype 'float16' is not one of \('float32', 'bfloat16'\)"):
        export_cli.main([f"--workdir={root}", f"--out={tmp_path}", "--dtype=float16"])
    with pytest.raises(SystemExit, match=r"max shard size 'lots' is not a size"):
        export_cli.main([f"--workdir={root}", f"--out={tmp_path}", "--max_shard_size=lots"])
    with pytest.raises(SystemExit, match=r"fusion 'xformer' has MAE.*CLIP tower cannot be expressed as Blip2Vision"):
        export_cli.main([f"--workdir={root}", f"--out={tmp_path}", "--format=hf"])
    assert not (pathlib.Path(tmp_path) / "model.safetensors").exists()
