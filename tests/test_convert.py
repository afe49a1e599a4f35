"""from_hf: checkpoint formats (sharded, fp16, bf16, legacy names), composites, and every error path."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers as T
from flax import traverse_util
from safetensors.torch import load_file, save_file

import gcs_emulator
import hf_models
import publisher_files
from xformer_jax import storage
from xformer_jax.convert import SUPPORTED_ARCHITECTURES, CheckpointMismatch, from_hf
from xformer_jax.convert import safetensors_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def eva_dir(tmp_path_factory):
    return hf_models.save(hf_models.eva_vision(), tmp_path_factory.mktemp("eva"))


def forward(module, params, size=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(1, 3, size, size)).astype(np.float32)
    return np.asarray(module.apply({"params": params}, pixel_values=x)["last_hidden_state"]), x


def assert_same_params(a, b):
    a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_sharded_checkpoint_equals_single_file(eva_dir, tmp_path):
    reference = T.Blip2VisionModel.from_pretrained(eva_dir)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.exists(tmp_path / safetensors_io.INDEX_FILE)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
    assert_same_params(from_hf(eva_dir)[1], from_hf(str(tmp_path))[1])


def test_a_sharded_checkpoint_in_a_bucket_equals_the_one_on_disk(eva_dir, tmp_path):
    """save_pretrained's sharded layout copied into a GCS-compatible server on 127.0.0.1, read through gs://."""
    T.Blip2VisionModel.from_pretrained(eva_dir).save_pretrained(tmp_path, max_shard_size="20KB")
    with gcs_emulator.running("checkpoints"):
        for name in os.listdir(tmp_path):
            storage.copy(str(tmp_path / name), f"gs://checkpoints/eva/{name}")
        assert_same_params(from_hf(str(tmp_path))[1], from_hf("gs://checkpoints/eva")[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_are_widened_exactly(eva_dir, tmp_path, dtype):
    reference = T.Blip2VisionModel.from_pretrained(eva_dir, dtype=dtype)
    reference.save_pretrained(tmp_path)
    module, params = from_hf(str(tmp_path))
    got, x = forward(module, params)
    widened = T.Blip2VisionModel.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = widened(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_legacy_q_and_v_bias_are_fused(eva_dir, tmp_path):
    """Released BLIP-2 checkpoints keep `q_bias` / `v_bias`; the key bias is zero."""
    shutil.copy(os.path.join(eva_dir, "config.json"), tmp_path)
    tensors = load_file(os.path.join(eva_dir, "model.safetensors"))
    for name in [k for k in tensors if k.endswith("qkv.bias")]:
        q, _, v = tensors.pop(name).chunk(3)
        tensors[name.replace("qkv.bias", "q_bias")], tensors[name.replace("qkv.bias", "v_bias")] = q, v
    save_file(tensors, tmp_path / "model.safetensors")
    _, params = from_hf(str(tmp_path))
    bias = params["blocks"]["block_0"]["attn"]["qkv"]["bias"]
    width = bias.shape[0] // 3
    np.testing.assert_array_equal(bias[width:2 * width], 0.0)
    np.testing.assert_array_equal(bias[:width], tensors["encoder.layers.0.self_attn.q_bias"].numpy())


def test_composite_directories_yield_their_vision_tower(tmp_path):
    tiny = hf_models.tiny_vision_kwargs()
    clip = T.CLIPModel(T.CLIPConfig(vision_config=tiny, text_config=dict(hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=4, intermediate_size=64, vocab_size=99),
                                    projection_dim=16))
    hf_models.randomize(clip)
    module, params = from_hf(hf_models.save(clip, tmp_path / "clip"))
    got, x = forward(module, params)
    with torch.no_grad():
        expected = clip.vision_model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    blip2 = T.Blip2ForImageTextRetrieval(T.Blip2Config(
        vision_config=tiny, qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=64, encoder_hidden_size=32, vocab_size=99),
        num_query_tokens=4, image_text_hidden_size=16))
    hf_models.randomize(blip2)
    module, params = from_hf(hf_models.save(blip2, tmp_path / "blip2"), component="vision")
    got, x = forward(module, params)
    with torch.no_grad():
        expected = blip2.vision_model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_pytorch_bin_checkpoints_as_the_hub_holds_them_equal_safetensors(tmp_path):
    """facebook/opt-*: sharded pytorch_model.bin with the bare OPTModel's keys and no LM head; the original
    bert-base-uncased: LayerNorm gamma / beta; facebook/vit-mae-*: one pytorch_model.bin. Read without torch."""
    cases = [(hf_models.opt_causal_lm(), dict(bare_base_model=True, shards=3), {}),
             (hf_models.bert("BertForMaskedLM"), dict(legacy_layer_norm=True), dict(num_query_tokens=4)),
             (hf_models.mae_pretraining(), {}, {})]
    for index, (model, layout, overrides) in enumerate(cases):
        published = publisher_files.torch_checkpoint(model, tmp_path / f"bin{index}", **layout)
        if layout.get("shards"):
            assert os.path.exists(os.path.join(published, "pytorch_model.bin.index.json"))
        saved = hf_models.save(model, tmp_path / f"safetensors{index}")
        assert_same_params(from_hf(saved, **overrides)[1], from_hf(published, **overrides)[1])


def test_a_pickle_that_is_not_a_state_dict_of_tensors_is_refused(eva_dir, tmp_path):
    shutil.copy(os.path.join(eva_dir, "config.json"), tmp_path)
    torch.save({"weight": torch.zeros(2), "hook": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match=r"pytorch_model.bin: holds (__builtin__|builtins).print"):
        from_hf(str(tmp_path))


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        from_hf(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(str(tmp_path))


def test_missing_weights_file(eva_dir, tmp_path):
    shutil.copy(os.path.join(eva_dir, "config.json"), tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_hf(str(tmp_path))


def test_unsupported_architecture_lists_the_supported_ones(eva_dir, tmp_path):
    config = json.load(open(os.path.join(eva_dir, "config.json")))
    config["architectures"] = ["GPT2LMHeadModel"]
    json.dump(config, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        from_hf(str(tmp_path))
    assert all(name in str(err.value) for name in SUPPORTED_ARCHITECTURES)


def rewrite(eva_dir, tmp_path, edit):
    shutil.copy(os.path.join(eva_dir, "config.json"), tmp_path)
    tensors = load_file(os.path.join(eva_dir, "model.safetensors"))
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return str(tmp_path), str(tmp_path / "model.safetensors")


def test_unexpected_key_names_file_and_key(eva_dir, tmp_path):
    directory, path = rewrite(eva_dir, tmp_path, lambda t: t.update({"encoder.extra.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointMismatch, match="encoder.extra.weight") as err:
        from_hf(directory)
    assert path in str(err.value) and "unexpected" in str(err.value)


def test_missing_key_is_named(eva_dir, tmp_path):
    directory, _ = rewrite(eva_dir, tmp_path, lambda t: t.pop("encoder.layers.1.mlp.fc2.weight"))
    with pytest.raises(CheckpointMismatch, match=r"blocks/block_1/mlp/fc2/kernel.*\(64, 32\)"):
        from_hf(directory)


def test_shape_mismatch_names_file_key_and_both_shapes(eva_dir, tmp_path):
    directory, path = rewrite(eva_dir, tmp_path, lambda t: t.update({"encoder.layers.0.mlp.fc1.weight": torch.zeros(48, 32)}))
    with pytest.raises(CheckpointMismatch) as err:
        from_hf(directory)
    message = str(err.value)
    assert path in message and "encoder.layers.0.mlp.fc1.weight" in message
    assert "(32, 48)" in message and "(32, 64)" in message


def test_import_and_from_hf_work_without_torch(eva_dir):
    script = textwrap.dedent(f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "transformers":
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, BlockTorch())
        import xformer_jax
        from xformer_jax.convert import from_hf
        module, params = from_hf({eva_dir!r})
        assert "torch" not in sys.modules
        print("ok", type(module).__name__)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "ok VisionTransformer" in result.stdout
