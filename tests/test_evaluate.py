"""launch/evaluate.py's gqa / count / retrieval modes end to end on tiny trained runs, and the synthetic
benchmark's GQA and counting files; retrieval with ITM re-ranking against a brute-force reference."""
import functools
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from launch import evaluate
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.data import bpe, synthetic
from xformer_jax.data.pipeline import image_transform
from xformer_jax.data.tokenizers import QFormerTokenizer
from xformer_jax.data.transforms import clean_caption
from xformer_jax.eval import recall
from xformer_jax.eval.vqa import normalize_answer
from xformer_jax.predict import captions, inputs, rankings
from xformer_jax.proj.synthetic import cache, evaluation, probes, scenes
from xformer_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K_TEST = 3  # below the 8 images / 40 texts of the val split, so re-ranking leaves most pairs at -100


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A stage-1 run and the stage-2 run started from it, as tests/test_stage2.py trains them (the same
    configs, so the persistent compilation cache serves both modules' train steps)."""
    workdir = tmp_path_factory.mktemp("evaluate")
    stage1 = tiny_config(workdir)
    paths = synthetic.write_dataset(stage1.data.path, **stage1.data.synthetic.to_dict())
    texts = [e["caption"] for e in json.load(open(paths["caption_train"]))]
    tokenizer = bpe.train_bpe(texts + ["a photo of", "Question: Short answer:"], str(workdir / "tokenizer.json"), 400)
    loop.train(stage1, str(workdir / "run1"))
    stage2 = tiny_stage2_config(workdir, tokenizer)
    stage2.init_from = str(workdir / "run1")
    stage2.total_steps, stage2.checkpoint_every = 2, 2
    loop.train(stage2, str(workdir / "run2"))
    return {"paths": paths, "stage1": str(workdir / "run1"), "stage2": str(workdir / "run2"), "out": workdir}


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_synthetic_gqa_and_count_files_restate_the_vqa_questions(tmp_path):
    paths = synthetic.write_dataset(tmp_path, num_train=2, num_val=3, num_test=0, image_size=32)
    annotations = {a["question_id"]: a for a in _load(paths["vqa_val_annotations"])["annotations"]}
    questions = {q["question_id"]: q["question"] for q in _load(paths["vqa_val_questions"])["questions"]}
    gqa = _load(paths["gqa_val_questions"])
    assert sorted(gqa) == sorted(str(i) for i in annotations)
    for question_id, entry in gqa.items():
        vqa = annotations[int(question_id)]
        assert entry["question"] == questions[int(question_id)] and entry["answer"] == vqa["multiple_choice_answer"]
        assert (entry["types"]["structural"], entry["types"]["semantic"]) == synthetic.GQA_TYPES[vqa["question_type"]]
        assert entry["types"]["detailed"] == vqa["question_type"] and entry["isBalanced"] is True
        image_index = vqa["image_id"] - synthetic.image_id("val", 0)
        assert entry["imageId"] == f"val_{image_index:06d}"
        assert (tmp_path / "images" / "val" / f"{entry['imageId']}.png").is_file()
    count = _load(paths["count_val"])
    assert [c["question_id"] for c in count] == [i for i, a in annotations.items() if a["question_type"] == "count"]
    assert len(count) == 3  # one count question per image
    for entry in count:
        vqa = annotations[entry["question_id"]]
        assert entry["count"] == int(vqa["multiple_choice_answer"])
        assert entry["question"] == questions[vqa["question_id"]]
        assert (tmp_path / entry["image"]).is_file()


DECODING = ["--num_beams=2", "--max_new_tokens=3", "--batch_size=8"]


def test_gqa_and_count_runs_write_official_predictions_and_scores(runs, capsys):
    data, out = runs["paths"], runs["out"]
    evaluate.main(["gqa", f"--workdir={runs['stage2']}", f"--questions={data['gqa_val_questions']}",
                   f"--image_root={data['images_val']}", "--image_pattern={}.png", f"--out={out / 'gqa'}",
                   "--limit=8", *DECODING])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predictions = _load(out / "gqa" / "predictions.json")
    questions = _load(data["gqa_val_questions"])
    assert [p["questionId"] for p in predictions] == list(questions)[:8]
    assert all(isinstance(p["prediction"], str) for p in predictions)
    assert printed == _load(out / "gqa" / "scores.json") and printed["num_questions"] == 8
    correct = [normalize_answer(p["prediction"]) == normalize_answer(questions[p["questionId"]]["answer"])
               for p in predictions]
    assert printed["accuracy"] == round(100 * np.mean(correct), 2)
    assert set(printed["per_structural_type"]) <= {"query", "verify"}
    assert set(printed["per_semantic_type"]) <= {"attr", "rel", "obj"}

    evaluate.main(["count", f"--workdir={runs['stage2']}", f"--questions={data['count_val']}",
                   f"--image_root={data['root']}", f"--out={out / 'count'}", *DECODING])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = _load(data["count_val"])
    answers = {p["question_id"]: p["answer"] for p in _load(out / "count" / "predictions.json")}
    assert list(answers) == [c["question_id"] for c in counts] and printed["num_questions"] == len(counts) == 8
    assert printed["task"] == "gvt_count" and 0.0 <= printed["accuracy"] <= 100.0
    # The same question on the same image (found through GQA's imageId) gets the same answer in both modes.
    by_gqa = {int(p["questionId"]): p["prediction"] for p in predictions}
    shared = set(by_gqa) & set(answers)
    assert shared and all(by_gqa[i] == answers[i] for i in shared)


def test_caption_run_scores_the_text_after_the_prompt(runs, capsys):
    data, out = runs["paths"], runs["out"]
    evaluate.main(["caption", f"--workdir={runs['stage2']}", f"--images={data['caption_val']}",
                   f"--image_root={data['root']}", f"--annotations={data['caption_val_gt']}",
                   f"--out={out / 'caption'}", *DECODING])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predictions = _load(out / "caption" / "predictions.json")
    assert len(predictions) == 8 and printed == _load(out / "caption" / "scores.json")
    captioner = captions.Captioner.from_workdir(runs["stage2"], num_beams=2, max_new_tokens=3)
    images = [Image.open(data["root"] + "/" + e["image"]) for e in _load(data["caption_val"])]
    assert [p["caption"] for p in predictions] == captioner.answer(images, [captions.CAPTION_PROMPT] * 8)


def test_caption_run_reads_the_coco_captions_format_and_predicts_only_without_captions(runs, capsys):
    """The same images as a COCO captions file (images with file names + annotations) score as the LAVIS
    split does; as an image_info file (images only, as COCO ships its test sets) they are captioned only."""
    data, out = runs["paths"], runs["out"]
    split = _load(data["caption_val"])
    images = [{"id": 500 + k, "file_name": e["image"], "height": 64, "width": 64} for k, e in enumerate(split)]
    annotations = [{"image_id": 500 + k, "caption": c, "id": 10 * k + j}
                   for k, e in enumerate(split) for j, c in enumerate(e["caption"])]
    coco = out / "captions_val.json"
    coco.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    evaluate.main(["caption", f"--workdir={runs['stage2']}", f"--images={coco}", f"--image_root={data['root']}",
                   f"--out={out / 'caption_coco'}", *DECODING])
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lavis = _load(out / "caption" / "predictions.json")  # test_caption_run_scores_the_text_after_the_prompt's
    predictions = _load(out / "caption_coco" / "predictions.json")
    assert [p["image_id"] for p in predictions] == [im["id"] for im in images]
    assert [p["caption"] for p in predictions] == [p["caption"] for p in lavis]
    assert scores["CIDEr"] == pytest.approx(_load(out / "caption" / "scores.json")["CIDEr"])

    info = out / "image_info_test.json"
    info.write_text(json.dumps({"info": {}, "licenses": [], "images": images[:3]}))
    evaluate.main(["caption", f"--workdir={runs['stage2']}", f"--images={info}", f"--image_root={data['root']}",
                   f"--out={out / 'caption_test'}", *DECODING])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_images"] == 3 and not (out / "caption_test" / "scores.json").exists()
    assert _load(printed["predictions"]) == predictions[:3]


def test_retrieval_refuses_a_stage2_run(runs):
    data = runs["paths"]
    with pytest.raises(SystemExit, match="stage2 run"):
        evaluate.main(["retrieval", f"--workdir={runs['stage2']}", f"--images={data['caption_val']}",
                       f"--image_root={data['root']}", f"--out={runs['out'] / 'nothing'}"])



def test_a_retrieval_split_without_captions_fails_naming_the_file_and_entry(runs, tmp_path):
    split = tmp_path / "flickr30k_test.json"
    split.write_text(json.dumps([{"image": "a.png", "caption": ["a dog"]}, {"image": "b.png"}]))
    with pytest.raises(SystemExit, match="flickr30k_test.json: entry 1 has no 'caption'"):
        evaluate.main(["retrieval", f"--workdir={runs['stage1']}", f"--images={split}",
                       f"--image_root={tmp_path}", f"--out={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()

def _reference_scores(config, model, params, entries, image_root, k_test):
    """ITC similarities from the model's paired retrieval pass, ITM logits of every (image, text) pair from
    the pixels, and LAVIS's re-ranking written out: (sims, scores_i2t, scores_t2i, text_to_image)."""
    transform = image_transform(config.data, train=False)
    pixels, mae_pixels = inputs.pixels(transform, [Image.open(f"{image_root}/{e['image']}") for e in entries])
    texts = [c for e in entries for c in e["caption"]]
    text_to_image = np.repeat(np.arange(len(entries)), [len(e["caption"]) for e in entries])
    tokens = QFormerTokenizer(config.data.vocab_path or None, config.data.max_len)(
        [clean_caption(t, config.data.max_words) for t in texts])
    variables = {"params": params}
    image_embeds, text_embeds = jax.jit(functools.partial(model.apply, method=model.retrieval_embeddings))(
        variables, pixels[text_to_image], tokens["input_ids"], tokens["attention_mask"], mae_pixels[text_to_image])
    first_text = np.searchsorted(text_to_image, np.arange(len(entries)))
    sims = np.einsum("iqd,td->iqt", np.asarray(image_embeds)[first_text], np.asarray(text_embeds)).max(axis=1)
    pair_image, pair_text = np.divmod(np.arange(len(entries) * len(texts)), len(texts))

    def itm(m, px, mpx, ids, mask):
        images = m.encode_images(px, mpx, mask_ratio=0.0)
        return m.itm_logits(images["clip"], images.get("mae"), ids, mask)[:, 1]
    logits = np.asarray(jax.jit(functools.partial(model.apply, method=itm))(
        variables, pixels[pair_image], mae_pixels[pair_image], tokens["input_ids"][pair_text],
        tokens["attention_mask"][pair_text])).reshape(len(entries), len(texts))
    i2t = np.full(sims.shape, -100.0)
    t2i = np.full(sims.T.shape, -100.0)
    for image in range(len(entries)):
        top = np.argsort(-sims[image])[:k_test]
        i2t[image, top] = logits[image, top] + sims[image, top]
    for text in range(len(texts)):
        top = np.argsort(-sims[:, text])[:k_test]
        t2i[text, top] = logits[top, text] + sims[top, text]
    return sims, i2t, t2i, text_to_image


def test_retrieval_with_itm_reranking_equals_a_brute_force_reference(runs, capsys):
    data, out = runs["paths"], runs["out"] / "retrieval"
    entries = _load(data["caption_val"])
    retriever = rankings.Retriever.from_workdir(runs["stage1"])
    sims, ref_i2t, ref_t2i, text_to_image = _reference_scores(retriever.config, retriever.model, retriever.params,
                                                              entries, data["root"], K_TEST)
    images = retriever.encode_images([Image.open(f"{data['root']}/{e['image']}") for e in entries])
    texts = retriever.encode_texts([c for e in entries for c in e["caption"]])
    got_sims, got_i2t, got_t2i = retriever.scores(images, texts, K_TEST)
    assert np.abs(got_sims - sims).max() < 1e-5
    assert np.abs(got_i2t - ref_i2t).max() < 1e-5 and np.abs(got_t2i - ref_t2i).max() < 1e-5
    assert (got_i2t == -100).sum() == len(entries) * (len(text_to_image) - K_TEST)

    evaluate.main(["retrieval", f"--workdir={runs['stage1']}", f"--images={data['caption_val']}",
                   f"--image_root={data['root']}", f"--out={out}", f"--k_test={K_TEST}", "--batch_size=8"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reference = recall.recall_at_k(ref_i2t, ref_t2i, text_to_image)
    assert printed == _load(out / "scores.json")
    for key, value in reference.items():
        assert printed[key] == pytest.approx(value, abs=1e-9), key
    assert printed["itc"] == pytest.approx(recall.retrieval_recall(sims, text_to_image))
    ranked = _load(out / "rankings.json")
    np.testing.assert_array_equal(ranked["i2t"], np.argsort(-ref_i2t, axis=1, kind="stable")[:, :10])
    np.testing.assert_array_equal(ranked["t2i"], np.argsort(-ref_t2i, axis=1, kind="stable")[:, :10])
    assert printed["num_images"] == 8 and printed["num_texts"] == 40


def test_prefix_probes_read_the_llm_prefix_of_every_image(runs, monkeypatch, capsys):
    """benchmarks/prefix_probes.py: the probes see each image's projected queries, flattened, training
    images to fit and the held-out ones to score."""
    spec = importlib.util.spec_from_file_location("prefix_probes", os.path.join(REPO, "benchmarks", "prefix_probes.py"))
    prefix_probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prefix_probes)
    seen = {}
    real_probe_all = probes.probe_all

    def probe_all(train, train_scenes, held_out, held_out_scenes):
        seen.update(train=train, held_out=held_out, scenes=(len(train_scenes), len(held_out_scenes)))
        return real_probe_all(train, train_scenes, held_out, held_out_scenes)

    monkeypatch.setattr(probes, "probe_all", probe_all)
    monkeypatch.setattr("sys.argv", ["prefix_probes.py", f"--run={runs['stage2']}", f"--data={runs['paths']['root']}"])
    prefix_probes.main()
    result = json.loads(capsys.readouterr().out)
    assert set(result["prefix"]) == set(probes.TASKS)
    assert all(0 <= v <= 100 for task in result["prefix"].values() for v in task.values())
    paths = runs["paths"]
    train_entries = scenes.split_images(paths, "train")
    assert seen["scenes"] == (len(train_entries), sum(len(scenes.split_images(paths, s)) for s in evaluation.EVAL_SPLITS))
    captioner = captions.Captioner.from_workdir(runs["stage2"], num_beams=1)
    pixels, mae_pixels = captioner.pixels(scenes.load_images(train_entries[:2], paths["root"]))
    expected = captioner.model.apply({"params": captioner.params}, pixels, mae_pixels, method=captioner.model.prefix)[0]
    np.testing.assert_allclose(seen["train"][:2], np.asarray(expected).reshape(2, -1), atol=1e-5)
    queries = seen["held_out"].reshape(len(seen["held_out"]), captioner.config.model.qformer.num_query_tokens, -1)
    pairs = [(i, j) for i in range(queries.shape[1]) for j in range(queries.shape[1]) if i != j]
    cosine = np.mean([np.sum(queries[:, i] * queries[:, j], -1) / np.linalg.norm(queries[:, i], axis=-1)
                      / np.linalg.norm(queries[:, j], axis=-1) for i, j in pairs])
    np.testing.assert_allclose(result["query_cosine"], cosine, atol=1e-5)
    with pytest.raises(SystemExit, match="no synthetic dataset"):
        monkeypatch.setattr("sys.argv", ["prefix_probes.py", f"--run={runs['stage2']}", f"--data={runs['out']}"])
        prefix_probes.main()


def test_prefix_probes_are_kept_and_reused_while_the_run_is_unchanged(runs, tmp_path, monkeypatch):
    """evaluation.prefix_probes with out_dir writes prefix_probes.json and a rerun reads it instead of probing
    again; another run's config in the spec makes it probe afresh."""
    out = str(tmp_path / "prefix_probes")
    first = evaluation.prefix_probes(runs["stage2"], runs["paths"], out)
    assert json.loads(open(os.path.join(out, "prefix_probes.json")).read()) == first

    def no_probing(*args, **kwargs):
        raise AssertionError("probed again")
    monkeypatch.setattr(evaluation, "_probe_features", no_probing)
    assert evaluation.prefix_probes(runs["stage2"], runs["paths"], out) == first
    spec_path = os.path.join(out, cache.SPEC)
    spec = json.loads(open(spec_path).read())
    spec["run"]["total_steps"] = -1
    open(spec_path, "w").write(json.dumps(spec))
    with pytest.raises(AssertionError, match="probed again"):
        evaluation.prefix_probes(runs["stage2"], runs["paths"], out)
