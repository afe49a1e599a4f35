"""A run whose workdir and data live in a bucket, against a real GCS-compatible server on 127.0.0.1
(gcp-storage-emulator, tests/gcs_emulator.py): launch/train.py trains with --workdir=gs://..., the
annotations, images and tokenizer read from the bucket; the same command resumes from the bucket's
newest checkpoint, also after a SIGKILL mid-run (no step logged twice, every logged value equal to
an uninterrupted local run's); a stage-2 run starts from the stage-1 run in the bucket; evaluate.py,
generate.py and export.py read that run and write their outputs there; a missing bucket or a server
that refuses answers in one line before any model is built. Nothing is written to the working
directory or to a local `gs:` folder.

The stage-1 runs are tests/engine_config.py's (one compile, shared through the persistent cache with
tests/test_train_engine.py), the stage-2 run tests/test_evaluate.py's.
"""
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2

import engine_config
import gcs_emulator
from launch import evaluate, export, generate
from processes import REPO, OutputReader, finish, outputs, subprocess_env
from xformer_jax import rundir, storage
from xformer_jax.configs.tiny import tiny_stage2_config
from xformer_jax.convert import safetensors_io
from xformer_jax.data import bpe, synthetic
from xformer_jax.train import loop

BUCKET = "xformer-test"
RUN, RUN2, DATA = f"gs://{BUCKET}/stage1", f"gs://{BUCKET}/stage2", f"gs://{BUCKET}/data"
DECODING = ["--num_beams=2", "--max_new_tokens=3", "--batch_size=8"]
STEPS_PER_INVOCATION = 4  # engine_config's stop_after_steps


def json_data(root) -> dict:
    """config.data keys that read the synthetic dataset as LAVIS caption files under `root`, with the
    synthetic kind's augmentation (no crop, no flip), so a bucket run and a local run see the same batches."""
    return {"kind": "json", "path": f"{root}/annotations/caption_train.json", "image_root": str(root),
            "eval_path": f"{root}/annotations/caption_val.json", "min_scale": 1.0, "flip": False}


def flags(data: dict) -> list[str]:
    return [f"--config.data.{key}={value}" for key, value in data.items()]


def read_records(workdir: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(storage.join(workdir, "metrics.jsonl")).splitlines()]


def train_steps(records) -> list[int]:
    return [r["step"] for r in records if "loss" in r]


def event_scalars(path: str) -> dict:
    """{tag: [(step, value)]} of one TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data, at, scalars = storage.read_bytes(path), 0, {}
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """The working directory of every command here: it must stay empty."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def local(gcs, tmp_path_factory):
    """The synthetic dataset and a BPE tokenizer written locally, then copied into the bucket."""
    root = tmp_path_factory.mktemp("object-storage")
    config = engine_config.get_config(str(root))
    paths = synthetic.write_dataset(config.data.path, **config.data.synthetic.to_dict())
    texts = [e["caption"] for e in json.loads(pathlib.Path(paths["caption_train"]).read_text())]
    tokenizer = bpe.train_bpe(texts + ["a photo of", "Question: Short answer:"], str(root / "tokenizer.json"), 400)
    for path in sorted(pathlib.Path(paths["root"]).rglob("*")):
        if path.is_file():
            storage.copy(str(path), storage.join(DATA, str(path.relative_to(paths["root"]))))
    storage.copy(tokenizer, f"gs://{BUCKET}/tokenizer.json")
    return {"root": root, "data": paths["root"], "tokenizer": tokenizer}


EVAL_EVERY = 4  # held-out losses from the bucket's eval file once per invocation (engine_config: every 2)


def train_command(workdir: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "train.py"), f"--config={REPO}/tests/engine_config.py:unused",
            f"--workdir={workdir}", *flags(json_data(DATA)), f"--config.eval_every={EVAL_EVERY}", *extra]


def launch(command, cwd):
    return subprocess.Popen(command, cwd=cwd, env=subprocess_env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def bucket_run(local, cwd):
    """launch/train.py into gs://BUCKET/stage1 three times: 4 steps; the same command again, SIGKILLed once
    it has logged its second step (its checkpoint of that step may be finished, half written or not begun);
    the same command a third time. Returns the outputs and the step each invocation resumed from."""
    runs = []
    reader = OutputReader(launch(train_command(RUN), cwd))
    runs.append(finish([reader], timeout=600)[0])
    assert reader.proc.returncode == 0, runs[-1]

    reader = OutputReader(launch(train_command(RUN), cwd))
    killed_after = STEPS_PER_INVOCATION + 2
    reader.wait_for(lambda line: line.startswith(f"step {killed_after}/"), timeout=600)
    reader.proc.send_signal(signal.SIGKILL)
    runs.append(finish([reader], timeout=60)[0])
    assert reader.proc.returncode == -signal.SIGKILL

    reader = OutputReader(launch(train_command(RUN), cwd))
    runs.append(finish([reader], timeout=600)[0])
    assert reader.proc.returncode == 0, runs[-1]
    return {"outputs": runs, "killed_after": killed_after}


@pytest.fixture(scope="module")
def reference(local, bucket_run):
    """The uninterrupted run of the same config on the same files on local disk, as far as the bucket run got."""
    config = engine_config.get_config("unused")
    config.data.update(json_data(local["data"]))
    config.eval_every = EVAL_EVERY
    config.stop_after_steps = train_steps(read_records(RUN))[-1]
    workdir = str(local["root"] / "reference")
    loop.train(config, workdir, eval_hook=loop.eval_losses(config, config.eval_batches))
    return read_records(workdir)


def test_a_run_in_a_bucket_resumes_there_after_a_kill_as_if_uninterrupted(bucket_run, reference):
    records = read_records(RUN)
    steps = train_steps(records)
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in bucket_run["outputs"][2].splitlines()
               if "resumed from step " in line]
    # The kill came after step 6 was logged: its checkpoint is the newest finished one, or step 4's is.
    assert resumed in ([STEPS_PER_INVOCATION], [STEPS_PER_INVOCATION + 2]), bucket_run["outputs"][2]
    assert steps == list(range(1, resumed[0] + STEPS_PER_INVOCATION + 1))  # each step logged once
    assert f"step {STEPS_PER_INVOCATION + 1}/" in bucket_run["outputs"][1]  # the second command resumed too
    want = {(r["step"], "loss" in r): r for r in reference}
    for record in records:
        expected = want[(record["step"], "loss" in record)]
        assert record.keys() == expected.keys()
        for key, value in expected.items():
            if key != "examples_per_sec":
                assert record[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (record["step"], key)

    first = bucket_run["outputs"][0]
    for said in (r"mesh data=2 x fsdp=2 x tensor=2: 8 x cpu \(cpu\), 1 process", r"parameters: \S+ trainable",
                 r"weights of vision +random init", r"run: steps 1-4 of 1000, batch 8; the whole run is 8,000 examples",
                 r"compiling the train step \.\.\.\ncompiled the train step in [\d.]+ s\nstep 1 took [\d.]+ s\n"):
        assert re.search(said, first), (said, first)
    assert "run: steps 5-8 of 1000" in bucket_run["outputs"][1]

    finished = sorted(int(name) for name in storage.listdir(storage.join(RUN, "checkpoints")) if name.isdigit())
    assert finished[-1] == steps[-1]
    assert rundir.read_config(RUN).data.path == json_data(DATA)["path"]
    events = [name for name in storage.listdir(storage.join(RUN, "tb")) if name.startswith("events.out.tfevents")]
    assert len(events) == 3  # one file per invocation
    logged = {}
    for name in events:
        for step, value in event_scalars(storage.join(RUN, "tb", name)).get("loss", []):
            logged[step] = value
    assert {step for step in logged if step <= steps[-1]} >= set(steps)
    assert logged[1] == pytest.approx(records[0]["loss"], rel=1e-6)


@pytest.fixture(scope="module")
def stage2_run(bucket_run, local, cwd):
    """tests/test_evaluate.py's stage-2 run, started from the stage-1 run in the bucket, into the bucket."""
    config = tiny_stage2_config(local["root"], f"gs://{BUCKET}/tokenizer.json")
    config.data.update(json_data(DATA))
    config.init_from = RUN
    config.total_steps, config.checkpoint_every = 2, 2
    os.chdir(cwd)
    try:
        loop.train(config, RUN2)
    finally:
        os.chdir(REPO)
    return RUN2


def test_evaluate_generate_and_export_read_the_run_from_the_bucket_and_write_there(stage2_run, local, cwd, capsys,
                                                                                  monkeypatch, tmp_path):
    monkeypatch.chdir(cwd)
    annotations = f"{DATA}/annotations"
    evaluate.main(["vqa", f"--workdir={stage2_run}", f"--questions={annotations}/vqa_val.json",
                   f"--image_root={DATA}", f"--annotations={annotations}/vqa_val_annotations.json",
                   f"--out=gs://{BUCKET}/eval/vqa", "--limit=8", *DECODING])
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= scores["accuracy"] <= 100
    predictions = storage.read_json(f"gs://{BUCKET}/eval/vqa/predictions.json")
    assert len(predictions) == 8 and all(set(p) == {"question_id", "answer"} for p in predictions)
    assert storage.read_json(f"gs://{BUCKET}/eval/vqa/scores.json") == scores

    image = f"{DATA}/images/val/val_000000.png"
    generate.main([f"--workdir={stage2_run}", f"--images={image}", "--num_beams=2", "--max_new_tokens=3"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"] == image and isinstance(line["caption"], str)

    out = f"gs://{BUCKET}/export"
    export.main([f"--workdir={stage2_run}", f"--out={out}"])
    export.main([f"--workdir={stage2_run}", f"--out={tmp_path / 'export'}"])
    written = storage.listdir(out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(written)
    assert written == storage.listdir(str(tmp_path / "export"))
    for name in written:  # the same bytes as an export of the same run to local disk
        assert storage.read_bytes(f"{out}/{name}") == (tmp_path / "export" / name).read_bytes(), name
    tensors, _ = safetensors_io.load_tensors(out)
    assert tensors


@pytest.mark.parametrize("case", ["missing bucket", "missing data bucket", "refusing server"])
def test_a_missing_bucket_or_a_refusing_server_is_one_line_before_any_model(gcs, local, cwd, case):
    workdir, extra, env = f"gs://no-such-bucket/run", [], subprocess_env(8)
    if case == "missing data bucket":
        workdir, extra = f"gs://{BUCKET}/never-written", ["--config.data.path=gs://no-such-data/train.json"]
    if case == "refusing server":
        closed = f"http://127.0.0.1:{gcs_emulator.portpicker.pick_unused_port()}"
        env.update(gcs_emulator.client_env(closed))
    result = subprocess.run(train_command(workdir, *extra), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("FATAL")]
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    expected = {"missing bucket": "workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist",
                "missing data bucket": "config.data.path=gs://no-such-data/train.json: bucket gs://no-such-data "
                                       "does not exist",
                "refusing server": f"workdir=gs://no-such-bucket/run: cannot reach the storage server 127.0.0.1:"}
    assert expected[case] in lines[0], lines[0]
    assert not storage.exists(f"gs://{BUCKET}/never-written")


def test_nothing_was_written_locally(bucket_run, stage2_run, cwd):
    """Runs, evaluations and exports in the bucket leave the working directory empty and make no `gs:` folder."""
    assert list(pathlib.Path(cwd).iterdir()) == []
    assert not (REPO / "gs:").exists()
