"""The demo recipe end to end at tiny size (both stages, evaluation, pictures, tables)."""
import json

import pytest

from launch import demo as demo_script
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.predict.benchmarks import Question
from xformer_jax.proj.synthetic import cache, demo, evaluation, mini_paper, parts as parts_lib, scenes

TINY_BUDGET = parts_lib.Budget(tower_steps=3, llm_steps=3, llm_batch_size=8, eval_batch_size=16)


@pytest.mark.slow
def test_demo_runs_both_stages_and_writes_its_table_pictures_and_predictions(tmp_path, capsys):
    stage1, stage2 = tiny_config(tmp_path), tiny_stage2_config(tmp_path, tokenizer_path="")
    stage2.total_steps = 2
    for config in (stage1, stage2):
        config.eval_every, config.eval_batches = 2, 1
    demo.run_demo(stage1, stage2, str(tmp_path / "demo"), TINY_BUDGET)
    out = capsys.readouterr().out

    for name in ("loss_curves.png", "reconstruction.png", "examples.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000, name
    for split in ("val", "test"):  # both splits evaluated, each from its own files
        questions = json.load(open(tmp_path / "demo" / "data" / "annotations" / f"vqa_{split}.json"))
        answers = json.load(open(tmp_path / "demo" / "eval" / split / "vqa_predictions.json"))
        assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions)
        captions = json.load(open(tmp_path / "demo" / "eval" / split / "caption_predictions.json"))
        assert len(captions) == 8 and all(isinstance(c["caption"], str) for c in captions)
        scores = json.load(open(tmp_path / "demo" / "eval" / split / "scores.json"))
        for key in ("vqa", "vqa_shuffled_images"):
            assert set(scores[key]["per_question_type"]) == {"count", "color", "position", "exists"}
        assert set(scores["attributes"]) == {"colour", "shape", "count", "score", "precision"}
    for line in ("| stage 2 loss_lm |", "| the model (queries as prefix) |", "| the best constant answer per type on test |",
                 "| the model, each question asked of another image |",
                 "CIDEr-D", "| generated |", "| blind: ", "complete description", "| stage 2 |", "held-out validation pairs",
                 "reading the MAE encoder's own M", "| clip |", "| mae |", "| the stage-2 queries (the LLM's prefix) |",
                 "mean cosine between two queries"):
        assert line in out, line
    steps = [json.loads(line)["step"] for line in open(tmp_path / "demo" / "stage2" / "metrics.jsonl")]
    assert steps[-1] == 2

    # A rerun reuses the pretrained parts and the evaluation (loop.train's own reuse is tested elsewhere).
    eval_dir = tmp_path / "demo" / "eval" / "test"
    kept = [p for p in (tmp_path / "demo").rglob("*") if p.suffix == ".msgpack" or p.parent == eval_dir]
    before = {p: p.stat().st_mtime_ns for p in kept}
    timer = cache.Timer()
    stage1.data.path = str(tmp_path / "demo" / "data")
    parts = parts_lib.prepare_parts(stage1, stage2, str(tmp_path / "demo"), TINY_BUDGET, timer)
    assert evaluation.evaluate(str(tmp_path / "demo" / "stage2"), parts.paths, str(eval_dir), TINY_BUDGET, "test") == scores
    assert len(kept) >= 7 and [p for p in kept if p.stat().st_mtime_ns != before[p]] == []
    assert timer.seconds["tower pretraining"] < 1 and timer.seconds["LLM pretraining"] < 1


def test_pretrained_towers_of_another_seed_leave_the_first_seeds_reusable(tmp_path, monkeypatch):
    """Each tower spec keeps its own spec file: towers pretrained at seed 1 in the same directory do not
    make seed 0's pretrain again (they used to share one spec.json, the last writer's)."""
    config = tiny_config(tmp_path)
    scenes.dataset(config)
    directory = str(tmp_path / "towers")
    first = parts_lib.pretrained_towers(config, directory, steps=2, batch_size=8)
    config.seed = 1
    other = parts_lib.pretrained_towers(config, directory, steps=2, batch_size=8)
    assert set(first.values()).isdisjoint(other.values())

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again")
    monkeypatch.setattr(parts_lib.pretrain, "pretrain_mae", no_pretraining)
    for seed, paths in ((0, first), (1, other)):
        config.seed = seed
        assert parts_lib.pretrained_towers(config, directory, steps=2, batch_size=8) == paths
    with pytest.raises(AssertionError, match="pretrained again"):  # another spec still pretrains
        parts_lib.pretrained_towers(config, directory, steps=4, batch_size=8)


def test_shuffled_images_asks_every_question_of_another_image_keeping_each_images_questions_together():
    questions = [Question(10 * i + k, "?", f"im{i}.png") for i in range(5) for k in range(3)]
    shuffled = evaluation.shuffled_images(questions)
    assert [q.question_id for q in shuffled] == [q.question_id for q in questions]
    moved = {q.image: s.image for q, s in zip(questions, shuffled)}  # one destination per image
    assert len(moved) == 5 and sorted(moved.values()) == sorted(moved) and all(a != b for a, b in moved.items())
    assert all(moved[q.image] == s.image for q, s in zip(questions, shuffled))
    assert evaluation.shuffled_images(questions) == shuffled and evaluation.shuffled_images(questions, seed=1) != shuffled
    with pytest.raises(ValueError, match="2 or more images"):
        evaluation.shuffled_images(questions[:3])


def _scores(vqa: float, count: float, cider: float) -> dict:
    per_type = {"count": count, "color": 50.0, "position": 25.0, "exists": 75.0}
    return {"vqa": {"accuracy": vqa, "per_question_type": per_type}, "caption": {"CIDEr": cider},
            "attributes": {"score": cider / 2}}


def test_mini_paper_aggregates_seeds_into_mean_and_std_and_a_markdown_table():
    runs = {"blip2": [_scores(40.0, 10.0, 30.0), _scores(50.0, 30.0, 50.0)],
            "xformer": [{**_scores(60.0, 40.0, 70.0), "query_cosine": 0.25}]}
    prior = {"accuracy": 30.0, "per_question_type": {"count": 20.0, "color": 5.0, "position": 25.0, "exists": 50.0}}
    summary = {**mini_paper.aggregate(runs), "prior": mini_paper.aggregate({"prior": [prior]})["prior"]}

    assert summary["blip2"]["vqa"] == {"mean": 45.0, "std": 5.0, "n": 2}
    assert summary["blip2"]["count"] == {"mean": 20.0, "std": 10.0, "n": 2}
    assert summary["xformer"]["CIDEr"] == {"mean": 70.0, "std": 0.0, "n": 1}
    assert "CIDEr" not in summary["prior"] and summary["prior"]["exists"]["mean"] == 50.0
    lines = mini_paper.markdown(summary).splitlines()
    assert lines[0] == "| variant | seeds | vqa | count | color | position | exists | CIDEr | facts | query cosine |"
    assert lines[2] == ("| blip2 | 2 | 45.0 ± 5.0 | 20.0 ± 10.0 | 50.0 ± 0.0 | 25.0 ± 0.0 | 75.0 ± 0.0 | "
                        "40.0 ± 10.0 | 20.0 ± 5.0 | — |")
    assert lines[3].endswith("| 35.0 ± 0.0 | 0.25 ± 0.00 |")
    assert lines[4].startswith("| prior | 1 | 30.0 ± 0.0 | 20.0 ± 0.0 |") and lines[4].endswith("| — | — | — |")


def test_mini_paper_pairs_runs_by_seed():
    runs = {"blip2": [_scores(40.0, 10.0, 30.0), _scores(50.0, 30.0, 50.0)],
            "xformer": [_scores(44.0, 10.0, 20.0), _scores(52.0, 36.0, 50.0)]}
    deltas = mini_paper.paired(runs, "xformer", "blip2")
    assert deltas["vqa"] == {"mean": 3.0, "std": 1.0, "n": 2, "wins": 2}
    assert deltas["count"] == {"mean": 3.0, "std": 3.0, "n": 2, "wins": 1}
    assert deltas["CIDEr"]["mean"] == -5.0 and deltas["CIDEr"]["wins"] == 0
    assert mini_paper.mean_std("vqa", deltas["vqa"], signed=True) == "+3.0 ± 1.0"
    assert mini_paper.mean_std("query cosine", {"mean": -0.125, "std": 0.05}, signed=True) == "-0.12 ± 0.05"


def test_mini_paper_variants_change_only_the_fusion_and_the_reconstruction_weight(tmp_path):
    base = tiny_config(tmp_path)
    norec = mini_paper.variant_config(base, "xformer_norec", seed=3)
    assert (norec.model.fusion.kind, norec.loss.weights.rec, norec.seed, norec.data.seed) == ("xformer", 0.0, 3, 3)
    assert mini_paper.variant_config(base, "concat", seed=0).model.fusion.kind == "concat"
    assert base.loss.weights.rec == 1.0 and base.model.fusion.kind == "xformer"
    with pytest.raises(ValueError, match="unknown variant 'xattn'"):
        mini_paper.variant_config(base, "xattn", seed=0)


def test_scale_stretches_every_training_length_and_keeps_the_rest(monkeypatch, capsys):
    from xformer_jax.configs import demo as demo_config
    stage1, stage2, budget = demo_config.get_config("stage1"), demo_config.get_config("stage2"), parts_lib.Budget()
    long1, long2, long_budget = parts_lib.scaled(stage1, stage2, budget, 3)
    for short, long in ((stage1, long1), (stage2, long2)):
        assert long.total_steps == 3 * short.total_steps and long.optim.warmup_steps == 3 * short.optim.warmup_steps
        assert long.eval_every == 3 * short.eval_every and long.optim.lr == short.optim.lr
        assert long.model.to_dict() == short.model.to_dict() and long.data.to_dict() == short.data.to_dict()
    assert (long_budget.tower_steps, long_budget.llm_steps) == (3 * budget.tower_steps, 3 * budget.llm_steps)
    assert long_budget.tower_batch_size == budget.tower_batch_size and stage1.total_steps == 200  # copies
    assert parts_lib.scaled(stage1, stage2, budget, 1) == (stage1, stage2, budget)
    monkeypatch.setattr("sys.argv", ["demo.py", "--scale=0"])
    with pytest.raises(SystemExit):
        demo_script.main()
    assert "--scale=0.0: must be > 0" in capsys.readouterr().err
