"""docs/reproduce.md's commands, exactly as the page writes them, on tiny random checkpoints saved in each
hub repository's layout and tiny files in the official formats (tests/publisher_files.py): only $CKPT /
$DATA / $RUN and, by flags appended to each command, the sizes are shrunk. Then every output is checked,
and the mistakes a user can type stop within seconds naming their key, with nothing written."""
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

import publisher_files
from processes import REPO, subprocess_env
from xformer_jax.configs.cli import load_file
from xformer_jax.convert import pretrained

PAGE = REPO / "docs" / "reproduce.md"
BATCH = 8
# The commands run on one CPU device: the files' layouts are under test here, the sharded step in
# tests/test_train_engine.py (a run on 8 fake devices compiles the same step for 8 seconds longer).


def page_commands() -> list[list[str]]:
    """Every command of the page's bash block: continuation lines joined, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", PAGE.read_text(), re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def expand(argv: list[str], env: dict) -> list[str]:
    return [re.sub(r"\$(\w+)", lambda m: env[m.group(1)], a) for a in argv]


def size_flags(argv: list[str]) -> list[str]:
    """--config.model.PART.KEY=VALUE for each size the page's config sets and the tiny checkpoint differs in
    (what a user with the real checkpoints never types), and the smaller batch, query count and epochs."""
    config = load_file(str(REPO / next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))))
    for arg in argv:
        if arg.startswith("--config.model.") and arg.split("=", 1)[0].endswith(("hf_dir", "bert_dir")):
            key, value = arg[len("--config."):].split("=", 1)
            part, field = key.split(".")[1:]
            config.model[part][field] = value
    flags = []
    for part, ((loaded, source), _) in pretrained.checkpoint_architectures(config.model, config.stage).items():
        section = config.model[part]
        for name, value in vars(loaded).items():
            if name in source and name in section and name not in pretrained.RUN_FIELDS and section[name] != value \
                    and isinstance(value, (int, float, str)):
                flags.append(f"--config.model.{part}.{name}={value}")
    return flags + [f"--config.batch_size={BATCH}", "--config.epochs=1", "--config.model.qformer.num_query_tokens=4",
                    "--config.model.fusion.query_heads=4", "--config.model.fusion.mae_heads=4",
                    "--config.model.fusion.intermediate_size=64", "--config.optim.warmup_steps=1",
                    "--config.data.num_workers=0", "--config.log_every=1"]


SMALL = {"retrieval": ["--k_test=2", "--batch_size=4"],
         "caption": ["--num_beams=1", "--min_new_tokens=1", "--max_new_tokens=2", "--batch_size=4"],
         "vqa": ["--num_beams=1", "--max_new_tokens=2", "--batch_size=4"],
         "gqa": ["--num_beams=1", "--max_new_tokens=2", "--batch_size=4"]}


def run(argv: list[str], cwd, timeout: int = 600) -> str:
    command = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    proc = subprocess.run(command, cwd=cwd, env=subprocess_env(1), capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{output[-6000:]}"
    return output


def _load(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    data = publisher_files.datasets(root / "data")
    texts = [e["caption"] for e in _load(data["coco_train"]) + _load(data["vg_train"])]
    checkpoints = publisher_files.checkpoints(root / "ckpt", texts * 8 + ["a photo of", "Question: Short answer:"] * 8)
    os.rename(checkpoints["opt"], root / "ckpt" / "opt-6.7b")
    env = {"CKPT": str(root / "ckpt"), "DATA": str(root / "data"), "RUN": str(root / "run")}
    return {"root": root, "data": data, "env": env}


def label(argv: list[str]) -> str:
    """stage1 / stage2 for training, MODE:OUT for evaluations (score: "score"), export."""
    script = os.path.basename(argv[1])
    if script == "train.py":
        return "stage1" if ":stage1" in argv[2] else "stage2"
    if script == "evaluate.py":
        out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), "")
        return f"{argv[2]}:{os.path.basename(out)}" if out else argv[2]
    return script.removesuffix(".py")


@pytest.fixture(scope="module")
def outputs(tree):
    """Every command of the page in order, with the shrinking flags: {label: (argv as the page writes it,
    output, seconds, the flags appended)}."""
    results, tower_flags = {}, []
    for argv in page_commands():
        argv = expand(argv, tree["env"])
        script, mode = os.path.basename(argv[1]), argv[2] if len(argv) > 2 else ""
        extra = size_flags(argv) if script == "train.py" else SMALL.get(mode, [])
        if script == "train.py":  # stage 2 builds the parts of its init_from run at that run's (shrunk) sizes
            extra = tower_flags + extra
            tower_flags = tower_flags or [f for f in extra if f.startswith(("--config.model.vision.",
                                                                             "--config.model.mae.",
                                                                             "--config.model.qformer."))]
        start = time.monotonic()
        results[label(argv)] = (argv, run(argv + extra, cwd=REPO), time.monotonic() - start, extra)
    return results


def test_the_page_lists_the_paper_path_in_order():
    scripts = [(os.path.basename(a[1]), a[2] if a[1].endswith("evaluate.py") else "") for a in page_commands()]
    assert scripts == [("train.py", ""), ("evaluate.py", "retrieval"), ("train.py", ""), ("evaluate.py", "vqa"),
                       ("evaluate.py", "vqa"), ("evaluate.py", "vqa"), ("evaluate.py", "gqa"),
                       ("evaluate.py", "caption"), ("evaluate.py", "score"), ("export.py", "")]


def test_stage1_and_stage2_train_on_the_published_files(tree, outputs):
    run_dir = tree["env"]["RUN"]
    for stage in ("stage1", "stage2"):
        output = outputs[stage][1]
        assert "compiling the train step" in output and "FATAL" not in output
        # COCO (6 pairs) + VG (4): epochs 1 x 10 counted pairs / batch 8 -> 2 steps, the count kept.
        assert _load(os.path.join(run_dir, stage, "data_count.json"))["pairs"] == 10
        assert "total_steps 2 = config.epochs 1 x 10 pairs" in output
        steps = [json.loads(line)["step"] for line in open(os.path.join(run_dir, stage, "metrics.jsonl"))
                 if "loss" in line]
        assert steps and steps[-1] == 2
    config = _load(os.path.join(run_dir, "stage2", "config.json"))
    assert config["model"]["llm"]["hidden_size"] == 32  # the sizes came from the checkpoints


def test_evaluations_write_the_official_formats(tree, outputs):
    run_dir, data = tree["env"]["RUN"], tree["data"]
    val = _load(os.path.join(run_dir, "eval", "vqav2_val", "predictions.json"))
    assert sorted(p["question_id"] for p in val) == sorted(
        q["question_id"] for q in _load(data["vqav2_val_questions"])["questions"])
    assert all(set(p) == {"question_id", "answer"} and isinstance(p["answer"], str) for p in val)
    assert 0 <= _load(os.path.join(run_dir, "eval", "vqav2_val", "scores.json"))["accuracy"] <= 100
    test_dev = _load(os.path.join(run_dir, "eval", "vqav2_test-dev", "predictions.json"))
    assert [p["question_id"] for p in test_dev] == [1007, 16007]
    assert not os.path.exists(os.path.join(run_dir, "eval", "vqav2_test-dev", "scores.json"))
    assert _load(os.path.join(run_dir, "eval", "okvqa", "scores.json"))["num_questions"] == 2
    gqa = _load(os.path.join(run_dir, "eval", "gqa", "predictions.json"))
    assert sorted(p["questionId"] for p in gqa) == ["200", "201"] and all(set(p) == {"questionId", "prediction"}
                                                                         for p in gqa)
    captions = _load(os.path.join(run_dir, "eval", "coco_caption", "predictions.json"))
    assert sorted(c["image_id"] for c in captions) == sorted(publisher_files.COCO_VAL_IDS)
    assert {"CIDEr", "Bleu_4"} <= set(_load(os.path.join(run_dir, "eval", "coco_caption", "scores.json")))
    retrieval = _load(os.path.join(run_dir, "eval", "coco_retrieval", "scores.json"))
    assert retrieval["num_images"] == 3 and retrieval["num_texts"] == 15


def test_scoring_a_result_file_gives_the_hand_worked_accuracy(tree, outputs, tmp_path):
    argv = outputs["score"][0]
    predictions, expected = publisher_files.vqa_predictions(tree["data"])
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(predictions))
    argv = [a if not a.startswith("--predictions=") else f"--predictions={path}" for a in argv]
    assert json.loads(run(argv, cwd=REPO).strip().splitlines()[-1])["accuracy"] == expected


def test_the_export_loads_in_pytorch_with_the_runs_image_settings(tree, outputs):
    from PIL import Image
    from xformer_jax.torch import XFormerProcessor, from_pretrained
    out = os.path.join(tree["env"]["RUN"], "export", "stage2")
    model, processor = from_pretrained(out), XFormerProcessor.from_pretrained(out)
    assert type(model).__name__ == "XFormerForConditionalGeneration"
    image = Image.open(os.path.join(tree["data"]["coco_images"], publisher_files.coco_name("val2014", 73)))
    inputs = processor(images=image, text="a photo of")
    assert inputs["pixel_values"].shape == inputs["mae_pixel_values"].shape == (1, 3, 32, 32)
    assert processor.image_processor.image_mean != processor.mae_image_processor.image_mean  # CLIP's vs ImageNet's
    tokens = model.generate(**inputs, max_new_tokens=2, num_beams=1)
    assert isinstance(processor.batch_decode(tokens, skip_special_tokens=True)[0], str)


def _replaced(argv: list[str], flag: str, value) -> list[str]:
    """argv with `flag` set to `value` (None drops it)."""
    out = [a for a in argv if not a.startswith(flag + "=")]
    return out if value is None else out + [f"{flag}={value}"]


# The page's command with one mistake -> the key the one-line error must name (tests/test_preflight.py tries
# every checkpoint-directory mistake in-process).
MISTAKES = {
    "annotation file": ("stage1", "--config.data.path", "{DATA}/coco/annotations/coco_karpathy_trian.json",
                        "config.data.path"),
    "image roots": ("stage1", "--config.data.image_root", "{DATA}/coco/images", "config.data.image_root"),
    "no MAE weights": ("stage1", "--config.model.mae.hf_dir", None, "config.model.mae"),
    "a size that disagrees": ("stage1", "--config.model.vision.hidden_size", "48", "config.model.vision.hidden_size"),
    "warmup past the run": ("stage1", "--config.optim.warmup_steps", "50", "config.optim.warmup_steps"),
    "LLM without tokenizer": ("stage2", "--config.model.llm.hf_dir", "{CKPT}/vit-mae-huge",
                              "config.model.llm.hf_dir"),
    "questions file": ("vqa:vqav2_val", "--questions", "{DATA}/vqav2/questions.json", "--questions"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_stops_within_seconds_naming_its_key_and_writes_nothing(tree, outputs, mistake, tmp_path):
    where, flag, value, key = MISTAKES[mistake]
    env = tree["env"]
    argv, _, _, extra = outputs[where]
    workdir = str(tmp_path / "run")
    written = "--workdir=" if where.startswith("stage") else "--out="  # where the command would write
    argv = [a if not a.startswith(written) else written + workdir for a in argv]
    argv = _replaced(argv + [f for f in extra if not f.startswith(flag + "=")], flag,
                     value if value is None else value.format(**env))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=subprocess_env(1), capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip() and not line.startswith("I1")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert key in lines[-1], lines[-1]
    assert time.monotonic() - start < 30
    assert not os.path.exists(workdir)


def test_the_one_node_variant_reads_clip_and_mae_large_as_published(tree, tmp_path):
    """The page's one-node flags on configs/vit_l.py: CLIPModel's vision tower and MAE ViT-L pass the start-up
    checks and give the run their architecture (not trained here: the paper path above is)."""
    from xformer_jax.train import loop
    one_node = PAGE.read_text().split("**One node**", 1)[1].split("\n\n", 1)[0]
    flags = re.findall(r"--config\.model\.(?:vision|mae)\.hf_dir=\$CKPT/[\w.-]+", one_node)
    assert [f.split("=")[0] for f in flags] == ["--config.model.vision.hf_dir", "--config.model.mae.hf_dir"]
    argv = ["python", "launch/train.py", "--config=configs/vit_l.py:stage1", *expand(flags, tree["env"]),
            f"--config.model.qformer.bert_dir={tree['env']['CKPT']}/bert-base-uncased"]
    config = load_file(str(REPO / "configs" / "vit_l.py") + ":stage1")
    for flag in argv[3:] + size_flags(argv):  # as the command line would set them
        key, value = flag[len("--config."):].split("=", 1)
        *path, name = key.split(".")
        section = functools.reduce(lambda c, k: c[k], path, config)
        current = section[name]
        section[name] = (value == "True" if isinstance(current, bool) else
                         type(current)(value) if isinstance(current, (int, float)) else value)
    config.data.update(kind="json", path=tree["data"]["coco_train"], image_root=tree["data"]["coco_images"])
    prepared = loop.prepare(config, str(tmp_path / "run"))
    assert prepared.model.vision.kind == "clip" and prepared.model.vision.hidden_size == 32
    assert prepared.model.mae.hidden_size == 32 and prepared.data.image_size == 32
    assert not os.path.exists(tmp_path / "run")
