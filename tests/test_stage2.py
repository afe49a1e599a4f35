"""Stage 2: the prefix LM loss against a reference, overfitting, the stage-1 hand-over, generation."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from xformer_jax import factory, rundir
from xformer_jax.configs import demo
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.convert import pretrained
from xformer_jax.data import bpe, pipeline, synthetic
from xformer_jax.models import stage2
from xformer_jax.predict.captions import Captioner
from xformer_jax.proj.synthetic import pretrain
from xformer_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stage2")
    paths = synthetic.write_dataset(workdir / "data", num_train=48, num_val=8, num_test=8, image_size=64)
    texts = [e["caption"] for e in json.load(open(paths["caption_train"]))]
    tokenizer = bpe.train_bpe(texts + ["a photo of", "Question: Short answer:"], str(workdir / "tokenizer.json"), 400)
    return workdir, tokenizer


@pytest.fixture(scope="module")
def pretrained_llm(setup):
    """A frozen random LLM barely reacts to its prefix; give the tiny OPT a short LM pretraining."""
    workdir, tokenizer = setup
    config = tiny_stage2_config(workdir, tokenizer)
    llm = stage2.llm_module(factory.model_config(config).llm)
    batches = ({k: b[k] for k in ("input_ids", "attention_mask")} for b in pipeline.make_train_iterator(config))
    params, history = pretrain.pretrain_llm(llm, batches, 150, lr=3e-3)
    assert np.mean(history[-10:]) < 0.6 * history[0]
    path = str(workdir / "llm.msgpack")
    pretrained.save_params(path, params)
    return path


def test_lm_loss_equals_a_reference(setup):
    workdir, tokenizer = setup
    config = tiny_stage2_config(workdir, tokenizer)
    trainer = loop.make_trainer(config)
    local = next(pipeline.make_train_iterator(config))
    batch = trainer.global_batch(local)
    params = {**trainer.state.params, **trainer.state.frozen}
    model = trainer.model
    loss, _ = jax.jit(trainer.loss_fn)(trainer.state.params, trainer.state.frozen, batch, jax.random.key(0))

    # Reference: logits of the LLM over [projected queries; token embeddings], then HF's causal-LM
    # cross-entropy in NumPy with -100 on the query positions and wherever the pipeline put it.
    @jax.jit
    def llm_logits(params, batch):
        embeds, mask = model.apply({"params": params}, batch["pixel_values"], batch["input_ids"],
                                   batch["attention_mask"], batch["mae_pixel_values"], method=model.prompt_embeddings)
        return model.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask,
                           method=lambda m, **kw: m.llm(**kw))["logits"]

    logits = np.asarray(llm_logits(params, batch), np.float64)
    queries = config.model.qformer.num_query_tokens
    labels = np.concatenate([np.full((labels_rows := local["labels"].shape[0], queries), -100), local["labels"]], 1)
    assert labels_rows == logits.shape[0]
    shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
    keep = shifted_labels != -100
    log_probs = shifted_logits - np.log(np.exp(shifted_logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.where(keep, shifted_labels, 0)[..., None], -1)[..., 0]
    reference = -(picked * keep).sum() / keep.sum()
    assert abs(float(loss) - reference) < 1e-5
    assert keep.sum() > 0 and not keep[:, : queries - 1].any()


@pytest.mark.slow
def test_forty_steps_on_one_batch_drive_the_loss_down(setup, pretrained_llm):
    workdir, tokenizer = setup
    config = tiny_stage2_config(workdir, tokenizer)
    config.model.llm.params_file = pretrained_llm
    config.total_steps = 40
    config.optim.update(lr=1e-3, min_lr=1e-3)
    trainer = loop.make_trainer(config)
    batch = trainer.global_batch(next(pipeline.make_train_iterator(config)))
    state, history = trainer.state, []
    for _ in range(40):
        state, metrics = trainer.step_fn(state, batch)
        history.append(float(metrics["loss_lm"]))
    first, last = np.mean(history[:3]), np.mean(history[-5:])
    print(f"stage 2 loss_lm: {first:.4f} -> {last:.4f}")
    assert last < 0.9 * first, history  # only the prefix trains


@pytest.mark.slow
def test_stage1_checkpoint_hands_over_and_stage2_trains_and_generates(setup):
    workdir, tokenizer = setup
    stage1_dir, stage2_dir = workdir / "run1", workdir / "run2"
    loop.train(tiny_config(workdir), str(stage1_dir))
    saved, _ = rundir.restore_params(str(stage1_dir))

    config = tiny_stage2_config(workdir, tokenizer)
    config.init_from = str(stage1_dir)
    config.total_steps, config.checkpoint_every = 2, 2
    other_tower = str(workdir / "other_vision.msgpack")  # a weight source in config.model loses to init_from
    pretrained.save_params(other_tower, jax.tree.map(lambda x: np.asarray(x) + 1.0, saved["vision"]))
    config.model.vision.params_file = other_tower
    trainer = loop.make_trainer(config)
    config.model.vision.params_file = ""
    loaded = {**trainer.state.params, **trainer.state.frozen}
    for name in ("vision", "mae", "dual", "qformer"):
        got, want = traverse_util.flatten_dict(loaded[name]), traverse_util.flatten_dict(saved[name])
        assert set(got) <= set(want)
        for key, value in got.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(want[key]), err_msg=f"{name}/{key}")
    assert "embeddings" not in loaded["qformer"]  # the text side stays behind at stage 2
    assert "decoder" not in loaded["mae"]  # no reconstruction at stage 2 unless configured

    loop.train(config, str(stage2_dir))
    records = [json.loads(line) for line in open(stage2_dir / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss_lm"]) for r in records)

    captioner = Captioner.from_workdir(str(stage2_dir), num_beams=2, max_new_tokens=4)
    image = Image.open(sorted((workdir / "data" / "images" / "val").iterdir())[0])
    captions = captioner.caption([image, image])
    answers = captioner.vqa([image], ["how many circles are there?"])
    assert len(captions) == 2 and captions[0] == captions[1] and captions[0].startswith("a photo of")
    assert len(answers) == 1 and isinstance(answers[0], str)

    image_path = sorted((workdir / "data" / "images" / "val").iterdir())[0]
    result = subprocess.run([sys.executable, "launch/generate.py", f"--workdir={stage2_dir}", f"--images={image_path}",
                             "--num_beams=2", "--max_new_tokens=4"], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["caption"] == captions[0]

    data = workdir / "data"
    out = workdir / "eval_vqa"
    result = subprocess.run([sys.executable, "launch/evaluate.py", "vqa", f"--workdir={stage2_dir}",
                             f"--questions={data}/annotations/vqa_val.json", f"--image_root={data}",
                             f"--annotations={data}/annotations/vqa_val_annotations.json", f"--out={out}",
                             "--limit=8", "--num_beams=2", "--max_new_tokens=3"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= scores["accuracy"] <= 100.0 and set(scores["per_question_type"]) <= {"count", "color", "position",
                                                                                       "exists"}
    assert len(json.load(open(out / "predictions.json"))) == 8


def test_demo_stage2_value_path_lr_scale_picks_the_qformer_cross_attention_value_and_output(setup):
    """configs/demo.py's stage-2 lr_scales name params of the stage-2 model: the value / output of the
    Q-Former's and the fusion block's cross-attention (none of the LLM's, whose attention is self-attention)."""
    workdir, tokenizer = setup
    layout = factory.model_layout(tiny_stage2_config(workdir, tokenizer))
    paths = traverse_util.flatten_dict(layout.param_shardings, sep="/")
    pattern, scale = demo.get_config("stage2").optim.lr_scales[0]
    picked = {p for p in paths if re.search(pattern, p)}
    assert picked and scale < 1
    assert all(p.startswith(("qformer/", "dual/")) and re.search(r"/crossattention/(value|output)/", p) for p in picked)
    assert any(p.startswith("qformer/") for p in picked) and any(p.startswith("dual/") for p in picked)
    assert any(re.search(r"/crossattention/query/", p) for p in paths)
