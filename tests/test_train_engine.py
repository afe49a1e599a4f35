"""The training engine end to end on tiny configs (8 fake CPU devices): the sharded step equals the
one-device step, exact resume, checkpoints move between meshes, a NaN stops the run, corrupt
webdataset images are counted, the eval hook; two processes train together through launch/train.py
and stop together on SIGTERM.

One reference run (tests/engine_config.py: the first 4 steps of a 1000-step schedule on a 2x2x2 mesh,
checkpoints at 2 and 4, eval every 2 steps) is shared by most tests. All runs share that schedule, so
each mesh compiles its step once (runs in subprocesses find it in the persistent compilation cache).
"""
import io
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import tarfile

import grain
import jax
import numpy as np
import portpicker
import pytest
from PIL import Image

import engine_config
from processes import OutputReader, finish, outputs, subprocess_env
from xformer_jax import partitioning
from xformer_jax.data import pipeline
from xformer_jax.train import checkpointing, loop, step_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSS_KEYS = ("loss", "loss_itc", "loss_itm", "loss_itg", "loss_rec")
TIMING_KEYS = ("examples_per_sec",)


# ----------------------------------------------------------------------------- helpers
def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def train_records(records):
    return [r for r in records if "loss" in r]


def eval_records(records):
    return [r for r in records if any(k.startswith("eval/") for k in r)]


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def abstract_state(trainer):
    return partitioning.with_shardings(jax.eval_shape(lambda s: s, trainer.state), trainer.state_shardings)


def restore(workdir, config, step, target):
    ckpt = checkpointing.Checkpointer(str(workdir), config.checkpoint)
    try:
        return ckpt.restore(step, target)
    finally:
        ckpt.close()


def assert_trees_close(got, want, atol, rtol=0.0):
    got_flat = jax.tree_util.tree_flatten_with_path(got)[0]
    want_leaves = jax.tree.leaves(want)
    assert len(got_flat) == len(want_leaves)
    for (path, g), w in zip(got_flat, want_leaves):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), atol=atol, rtol=rtol,
                                   err_msg=jax.tree_util.keystr(path))


def assert_finite(tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating):
            assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)


def launch_train(root, workdir, *flags, num_devices=8):
    command = [sys.executable, str(REPO / "launch" / "train.py"), f"--config={REPO}/tests/engine_config.py:{root}",
               f"--workdir={workdir}", *flags]
    return subprocess.Popen(command, cwd=REPO, env=subprocess_env(num_devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Holds the synthetic data (written once) and one workdir per run."""
    path = tmp_path_factory.mktemp("engine")
    pipeline.make_train_iterator(engine_config.get_config(str(path)))  # writes ROOT/data
    return path


def config_for(root, **overrides):
    config = engine_config.get_config(str(root))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def reference(root):
    """4 uninterrupted steps (config.stop_after_steps) on the 2x2x2 mesh with the eval hook every 2 steps."""
    config = config_for(root)
    workdir = root / "reference"
    state = loop.train(config, str(workdir), eval_hook=loop.eval_losses(config, config.eval_batches))
    return {"config": config, "workdir": workdir, "state": host(state), "metrics": read_metrics(workdir)}


@pytest.fixture(scope="module")
def trainers(root):
    """trainers((data, fsdp, tensor)): a Trainer of the engine config on the first data*fsdp*tensor
    devices, built once per mesh. Step copies of its state (`fresh_state`): the step donates."""
    built = {}

    def get(shape):
        if shape not in built:
            config = config_for(root)
            config.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
            built[shape] = loop.make_trainer(config, devices=jax.devices()[:math.prod(shape)])
        return built[shape]
    return get


def fresh_state(trainer):
    return jax.tree.map(lambda x: x.copy(), trainer.state)


@pytest.fixture(scope="module")
def target8(trainers):
    """The abstract train state on the 2x2x2 mesh (restore target)."""
    return abstract_state(trainers((2, 2, 2)))


# ----------------------------------------------------------------------------- 1. sharded == one device
def test_step_on_2x2x2_mesh_equals_single_device_step(root, trainers):
    sharded, single = trainers((2, 2, 2)), trainers((1, 1, 1))
    assert sharded.mesh.devices.shape == (2, 2, 2) and single.mesh.devices.size == 1
    assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
               for leaf in jax.tree.leaves(sharded.state.params))
    init8, init1 = host(sharded.state), host(single.state)
    assert_trees_close(init8, init1, atol=0)  # init is a function of config.seed only

    local = next(pipeline.make_train_iterator(sharded.config))
    state8, metrics8 = sharded.step_fn(fresh_state(sharded), sharded.global_batch(local))
    state1, metrics1 = single.step_fn(fresh_state(single), single.global_batch(local))
    metrics8, metrics1 = host(metrics8), host(metrics1)
    assert set(metrics8) >= set(LOSS_KEYS) | {"lr", "grad_norm"}
    for key in metrics8:
        np.testing.assert_allclose(metrics8[key], metrics1[key], atol=1e-5, rtol=1e-5, err_msg=key)
    state8, state1 = host(state8), host(state1)
    assert int(state8.step) == int(state1.step) == 1
    # Adam's first moment is 0.1 * the gradient: the gradients agree (to float32 summation noise) ...
    assert_trees_close(state8.opt_state, state1.opt_state, atol=1e-6, rtol=1e-4)
    # ... and so do the updated params, which the step did move.
    assert_trees_close(state8.params, state1.params, atol=1e-5, rtol=1e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(state8.params),
                                                              jax.tree.leaves(init8.params)))
    assert moved > 1e-4


# ----------------------------------------------------------------------------- 7. eval hook
def test_eval_hook_writes_eval_losses_to_metrics_jsonl(reference, trainers):
    records = reference["metrics"]
    evals = eval_records(records)
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert {f"eval/{k}" for k in LOSS_KEYS} <= set(record)
        assert record["eval/batches"] == 1.0
        assert all(np.isfinite(v) for v in record.values())
    assert [r["step"] for r in train_records(records)] == [1, 2, 3, 4]
    # The hook evaluates the current state: re-evaluating the final state gives the step-4 values.
    config = reference["config"]
    trainer = trainers((2, 2, 2))
    final = jax.device_put(reference["state"], trainer.state_shardings)
    again = loop.eval_losses(config, config.eval_batches)(trainer, final)
    for key in LOSS_KEYS:
        assert again[key] == pytest.approx(evals[-1][f"eval/{key}"], rel=1e-5), key
    assert evals[0]["eval/loss"] != evals[1]["eval/loss"]


# ----------------------------------------------------------------------------- 3. exact resume
def test_two_runs_of_two_steps_equal_one_run_of_four(root, reference):
    """config.stop_after_steps=2, run twice in one workdir: the second run resumes (state, data
    position, lr schedule) and metrics.jsonl ends up as the uninterrupted run's."""
    config = config_for(root, stop_after_steps=2)
    workdir = root / "resumed"
    loop.train(config, str(workdir), eval_hook=loop.eval_losses(config, config.eval_batches))
    first = read_metrics(workdir)
    assert [r["step"] for r in train_records(first)] == [1, 2]
    assert sorted(int(p) for p in os.listdir(workdir / "checkpoints")) == [2]

    state = loop.train(config, str(workdir), eval_hook=loop.eval_losses(config, config.eval_batches))
    assert int(state.step) == 4
    resumed, uninterrupted = read_metrics(workdir), reference["metrics"]
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted]
    assert set(train_records(resumed)[0]) >= set(LOSS_KEYS) | {"lr", "data/skipped"}
    for got, want in zip(without_timings(resumed), without_timings(uninterrupted)):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (got["step"], key)
    assert_trees_close(host(state.params), reference["state"].params, atol=1e-6)


# ----------------------------------------------------------------------------- 4. checkpoints move between meshes
@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 1, 1)], ids=["4x1x1", "1-device"])
def test_checkpoint_from_2x2x2_restores_on_other_meshes_and_training_goes_on(root, reference, trainers, shape):
    trainer = trainers(shape)
    config, target = trainer.config, abstract_state(trainer)
    restored = restore(reference["workdir"], config, 4, target)
    assert_trees_close(host(restored), reference["state"], atol=0)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
        assert leaf.sharding == want.sharding

    # Go on from the step-2 checkpoint (state and data position), as a resumed run on this mesh would.
    data_iter = pipeline.make_train_iterator(config)
    ckpt = checkpointing.Checkpointer(str(reference["workdir"]), config.checkpoint)
    state = ckpt.restore(2, target, data_iter)
    ckpt.close()
    for want in train_records(reference["metrics"])[2:]:
        state, metrics = trainer.step_fn(state, trainer.global_batch(next(data_iter)))
        metrics = host(metrics)
        for key in LOSS_KEYS + ("lr", "grad_norm"):
            assert np.isfinite(metrics[key])
            assert float(metrics[key]) == pytest.approx(want[key], rel=1e-5, abs=1e-5), (want["step"], key)
    assert int(state.step) == 4
    assert {d for leaf in jax.tree.leaves(state.params) for d in leaf.sharding.device_set} == \
        set(jax.devices()[:math.prod(shape)])
    assert_trees_close(host(state.params), reference["state"].params, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- 5. NaN (SIGTERM: see the two-process test)
class PoisonedIterator(grain.DatasetIterator):
    """Passes batches through, but fills batch number `at` (1-based) with NaN pixels."""

    def __init__(self, parent, at):
        super().__init__(parent)
        self._count, self._at = 0, at
        self.local_examples = parent.local_examples

    def __next__(self):
        batch = next(self._parent)
        self._count += 1
        if self._count == self._at:
            batch = dict(batch, pixel_values=np.full_like(batch["pixel_values"], np.nan))
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def logged_steps(workdir) -> list[int]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [r["step"] for r in read_metrics(workdir)] if path.exists() else []


# The loop reads a step's metrics one step late, and every pending step before a log line or a save
# (checkpoints every 2 steps). Logged at every step, step 3's NaN is read at once; logged rarely, it is
# read after step 4 is dispatched, before step 4's save; a NaN at step 4 is read just before its save.
@pytest.mark.parametrize("log_every,at", [(1, 3), (1000, 3), (1000, 4)],
                         ids=["read-at-its-log-line", "read-one-step-late", "read-before-the-save"])
def test_nan_loss_stops_with_step_and_term_and_keeps_last_checkpoint(root, reference, target8, monkeypatch,
                                                                     log_every, at):
    make = pipeline.make_train_iterator
    monkeypatch.setattr(pipeline, "make_train_iterator", lambda config: PoisonedIterator(make(config), at=at))
    config = config_for(root, log_every=log_every)
    workdir = root / f"nan_{log_every}_{at}"
    with pytest.raises(step_metrics.NonFiniteLoss, match=rf"^step {at}: loss is nan, loss_i\w+ is nan.*checkpoint"):
        loop.train(config, str(workdir))
    # Nothing of the NaN step was logged or saved, nor any later state; the step-2 checkpoint (async) was
    # finished and is the reference run's step-2 state.
    assert logged_steps(workdir) == ([1, 2] if log_every == 1 else [])
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    saved = host(restore(workdir, config, 2, target8))
    assert_finite(saved)
    assert int(saved.step) == 2
    assert_trees_close(saved, host(restore(reference["workdir"], config, 2, target8)), atol=0)


def test_check_finite_names_gradient_norm_too():
    step_metrics.check_finite(7, {"loss": 1.0, "loss_itc": 0.5, "grad_norm": 2.0, "temp": float("nan")})
    with pytest.raises(step_metrics.NonFiniteLoss, match=r"^step 7: grad_norm is inf"):
        step_metrics.check_finite(7, {"loss": 1.0, "grad_norm": float("inf")})
    with pytest.raises(step_metrics.NonFiniteLoss, match=r"^step 5: loss_rec is nan"):
        step_metrics.check_finite(5, {"loss_itc": 1.0, "loss_rec": float("nan")})


def test_pending_metrics_reads_a_step_only_once_the_next_is_dispatched():
    fetched = []
    pending = step_metrics.PendingMetrics(lag=1, fetch=lambda m: fetched.append(m["step"]) or m)
    pending.add(1, {"step": 1, "loss": 1.0})
    assert fetched == []  # step 1 may still be running: nothing waits on it
    pending.add(2, {"step": 2, "loss": 0.5})
    assert fetched == [1]
    assert pending.flush()["loss"] == 0.5 and fetched == [1, 2]
    pending.add(3, {"step": 3, "loss": float("inf")})
    with pytest.raises(step_metrics.NonFiniteLoss, match=r"^step 3: loss is inf"):
        pending.add(4, {"step": 4, "loss": 0.25})
    eager = step_metrics.PendingMetrics(lag=0, fetch=lambda m: fetched.append(m["step"]) or m)
    eager.add(5, {"step": 5, "loss": 1.0})
    assert fetched[-1] == 5 and eager.flush()["step"] == 5
    with pytest.raises(ValueError, match="metrics lag 2"):
        step_metrics.PendingMetrics(lag=2)


def encoded_jpeg(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(directory, sizes, corrupt):
    """Shard k holds sizes[k] KEY.jpg + KEY.txt pairs; the (shard, index) pairs in `corrupt` get
    undecodable image bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for shard, size in enumerate(sizes):
        with tarfile.open(directory / f"{shard:05d}.tar", "w") as tar:
            for i in range(size):
                key = f"{shard * 1000 + i:09d}"
                image = b"\xff\xd8 corrupt" if (shard, i) in corrupt else encoded_jpeg(shard * 100 + i)
                members = {f"{key}.jpg": image, f"{key}.txt": f"a photo of thing {shard} {i}".encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_webdataset_with_corrupt_images_trains_and_reports_skips(root):
    shards = root / "shards"
    # 8 good + 3 corrupt examples per epoch; a batch takes 8 good ones.
    write_shards(shards, sizes=(6, 5), corrupt={(0, 1), (0, 4), (1, 2)})
    (shards / "00002.tar").write_bytes(b"not a tar" * 100)  # a whole unreadable shard
    config = config_for(root, eval_every=0)
    config.data.update(kind="webdataset", path=str(shards / "{00000..00002}.tar"))
    workdir = root / "webdataset"
    state = loop.train(config, str(workdir))
    assert int(state.step) == 4
    records = train_records(read_metrics(workdir))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    skipped = [r["data/skipped"] for r in records]
    # An independent pass over the same pipeline: the logged counts are its running totals.
    replay = pipeline.make_train_iterator(config)
    assert skipped == [float(next(replay)["data/skipped"]) for _ in records]
    # Each step reads one epoch's 8 good examples, so after step k it has passed every corrupt one
    # of epochs 1..k-1 and some of epoch k.
    for k, value in enumerate(skipped, start=1):
        assert 3 * (k - 1) <= value <= 3 * k, skipped
    assert skipped[-1] > 0
    assert all(r["data/skipped_shards"] == 1.0 for r in records)


# ----------------------------------------------------------------------------- 2 + 5. two processes, SIGTERM
@pytest.mark.slow
def test_two_processes_train_together_and_stop_together_on_sigterm(root, trainers):
    """launch/train.py in 2 processes x 2 CPU devices (a 4x1x1 global mesh over both) on the full
    1000-step schedule, evaluating every step and polling for a stop every 2 steps. SIGTERM to process 1
    after the first step: both processes stop at the same step, save a checkpoint and exit 0. Process 0
    alone wrote metrics.jsonl, with the losses one process gets from the same global batches; the checkpoint
    holds the one-process state."""
    workdir = root / "two-processes"
    port = portpicker.pick_unused_port()
    procs = [launch_train(root, workdir, "--config.mesh.data=4", "--config.mesh.fsdp=1", "--config.mesh.tensor=1",
                          "--config.stop_after_steps=0", "--config.checkpoint_every=1000", "--config.eval_every=1",
                          "--config.checkpoint.preemption_poll_every=2", f"--coordinator_address=127.0.0.1:{port}",
                          "--num_processes=2", f"--process_id={i}", num_devices=2) for i in range(2)]
    readers = [OutputReader(p) for p in procs]
    try:
        readers[0].wait_for(lambda line: line.startswith("step 1/1000"), timeout=400, others=readers[1:])
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    procs[1].send_signal(signal.SIGTERM)
    texts = finish(readers, timeout=600)  # a guard against a hang; a few steps take seconds
    for proc in procs:
        assert proc.returncode == 0, outputs(*readers)
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints"))
    assert len(steps) == 1 and 1 <= steps[0] < 1000, steps
    stop = steps[0]
    for text in texts:
        assert f"preemption requested: checkpoint saved at step {stop}" in text, outputs(*readers)
    assert f"step {stop}/1000" in texts[0] and "step 1/1000" not in texts[1]  # only process 0 reports
    records = read_metrics(workdir)
    assert [r["step"] for r in train_records(records)] == list(range(1, stop + 1))
    assert [r["step"] for r in eval_records(records)] == list(range(1, stop + 1))  # eval runs on both processes
    assert all(np.isfinite(v) for r in records for v in r.values())

    # One process, 4 devices, fed the concatenation of both processes' local batches.
    trainer = trainers((4, 1, 1))
    iterators = [pipeline.make_train_iterator(trainer.config, process_index=i, process_count=2) for i in range(2)]
    state = fresh_state(trainer)
    for record in train_records(records):
        parts = [next(it) for it in iterators]
        local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if np.ndim(parts[0][k])}
        state, metrics = trainer.step_fn(state, trainer.global_batch(local))
        metrics = host(metrics)
        for key in LOSS_KEYS + ("lr", "grad_norm"):
            assert record[key] == pytest.approx(float(metrics[key]), rel=1e-4, abs=1e-4), (record["step"], key)
    saved = restore(workdir, trainer.config, stop, abstract_state(trainer))
    assert int(saved.step) == stop
    assert_finite(host(saved))
    assert_trees_close(host(saved), host(state), atol=1e-5, rtol=1e-5)
