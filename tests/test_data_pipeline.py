"""Input pipeline end to end on fixtures built here: every source kind, bad input skipped and counted,
determinism, disjoint per-process data, exact resume, evaluation padding, global arrays."""
import io
import json
import logging
import os
import re
import tarfile

import grain
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image

import gcs_emulator
from xformer_jax import storage
from xformer_jax.data import (QFormerTokenizer, default_data_config, make_eval_dataset, make_train_iterator,
                              to_global_batch)
from xformer_jax.data.config import flip_enabled
from xformer_jax.data.sources import open_source
from xformer_jax.data.tar_shards import expand_pattern

SIZE, MAE_SIZE = 16, 24


def encoded_image(seed, fmt="JPEG", shape=(20, 28)):
    pixels = np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated(data):
    return data[: len(data) // 2]


def make_config(**data):
    config = ml_collections.ConfigDict()
    config.data = default_data_config()
    config.data.update(dict(image_size=SIZE, mae_image_size=MAE_SIZE, batch_size=4, max_len=16, seed=3))
    config.data.update(data)
    return config


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def json_data(tmp_path_factory):
    """LAVIS caption list (12 good entries + a missing, a truncated, a garbage image and an empty
    caption) and a COCO-format eval file, images under a separate image_root."""
    root = tmp_path_factory.mktemp("json")
    images = root / "images"
    (images / "train").mkdir(parents=True)
    entries = []
    for i in range(12):
        (images / "train" / f"{i}.jpg").write_bytes(encoded_image(i))
        caption = [f"A Photo: number {i}!", f"another view {i}"] if i % 3 == 0 else f"A Photo: number {i}!"
        entries.append({"image": f"train/{i}.jpg", "caption": caption, "image_id": f"coco_{100 + i}"})
    (images / "train" / "cut.jpg").write_bytes(truncated(encoded_image(50)))
    (images / "train" / "junk.jpg").write_bytes(b"not an image")
    (images / "train" / "mute.jpg").write_bytes(encoded_image(51))
    bad = [{"image": "train/missing.jpg", "caption": "gone", "image_id": "coco_900"},
           {"image": "train/cut.jpg", "caption": "cut", "image_id": "coco_901"},
           {"image": "train/junk.jpg", "caption": "junk", "image_id": "coco_902"},
           {"image": "train/mute.jpg", "caption": " ... !! ", "image_id": "coco_903"}]
    ann = root / "ann"
    ann.mkdir()
    (ann / "clean.json").write_text(json.dumps(entries))
    (ann / "train.json").write_text(json.dumps(entries[:5] + bad[:2] + entries[5:] + bad[2:]))
    coco = {"images": [{"id": 7 + i, "file_name": f"train/{i}.jpg"} for i in range(5)] +
                      [{"id": 99, "file_name": "train/junk.jpg"}],
            "annotations": [{"image_id": 7 + i, "id": k, "caption": f"val {i} {k}"}
                            for i in range(5) for k in range(2)] + [{"image_id": 99, "id": 9, "caption": "junk"}]}
    (ann / "val.json").write_text(json.dumps(coco))
    return {"root": root, "images": str(images), "train": str(ann / "train.json"),
            "clean": str(ann / "clean.json"), "val": str(ann / "val.json"), "bad": [str(images / b["image"]) for b in bad]}


def add_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """img2dataset layout: 00000..00002.tar with KEY.jpg + KEY.txt + KEY.json (4 keys in shard 1 have
    only .json), one corrupt image and one empty caption; 00003.tar truncated mid-member, 00004.tar
    is not a tar; the pattern also names a missing 00005.tar."""
    root = tmp_path_factory.mktemp("wds")
    good = []
    for shard in range(4):
        path = root / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(6):
                key = f"{shard * 10000 + i:09d}"
                image = encoded_image(shard * 100 + i, "PNG" if i == 2 else "JPEG")
                caption = f"Shard {shard}, image {i}."
                if (shard, i) == (0, 5):
                    image = b"\xff\xd8 corrupt jpeg"
                elif (shard, i) == (2, 4):
                    caption = "#:;~"
                else:
                    good.append(int(key))
                add_member(tar, f"{key}.jpg", image)
                if not (shard == 1 and i < 4):
                    add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"caption": caption, "key": key, "status": "success"}).encode())
    with tarfile.open(root / "00003.tar") as tar:
        cut = tar.getmember("000030001.txt").offset_data + 3
    data = (root / "00003.tar").read_bytes()
    (root / "00003.tar").write_bytes(data[:cut])  # keeps key 0 whole and key 1's image; cuts key 1's caption
    good = [g for g in good if g <= 30000]
    (root / "00004.tar").write_bytes(b"garbage" * 200)
    return {"pattern": str(root / "{00000..00005}.tar"), "clean": str(root / "{00000..00001}.tar"),
            "good": sorted(good), "root": root}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    class TinyCaptionsData(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "caption": tfds.features.Text(),
                "image_id": np.int64,
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10), "val": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                image = b"broken" if i == 4 else encoded_image(200 + i)
                yield i, {"image": image, "caption": f"TFDS caption {i}.", "image_id": 500 + i}

    data_dir = tmp_path_factory.mktemp("tfds")
    TinyCaptionsData(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


# ----------------------------------------------------------------------------- every source


def check_batch(batch, local_batch):
    assert batch["pixel_values"].shape == (local_batch, 3, SIZE, SIZE)
    assert batch["mae_pixel_values"].shape == (local_batch, 3, MAE_SIZE, MAE_SIZE)
    assert batch["pixel_values"].dtype == batch["mae_pixel_values"].dtype == np.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (local_batch, 16)  # config max_len
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["image_id"].dtype == np.int32
    assert (batch["input_ids"][:, 0] == 101).all()  # [CLS]
    assert batch["data/skipped"].shape == batch["data/skipped_shards"].shape == ()


def test_json_source_skips_bad_examples_counts_them_exactly_and_logs_each_file(json_data, caplog):
    config = make_config(kind="json", path=json_data["train"], image_root=json_data["images"])
    caplog.set_level(logging.WARNING)
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    batches = take(iterator, 9)  # 36 examples: three epochs of the 12 good ones
    for batch in batches:
        check_batch(batch, 4)
    ids = np.concatenate([b["image_id"] for b in batches])
    assert sorted(ids[:12]) == list(range(100, 112)) and set(ids) == set(range(100, 112))

    # The exact count: bad indices met in the shuffled stream before the 36th good example.
    source = open_source(config.data, True, 0, 1)
    bad = {i for i in range(len(source)) if source.describe(i) in json_data["bad"]}
    order = grain.MapDataset.range(len(source)).seed(3).shuffle().repeat()
    good_seen = skipped = position = 0
    while good_seen < 36:
        if order[position] in bad:
            skipped += 1
        else:
            good_seen += 1
        position += 1
    assert int(batches[-1]["data/skipped"]) == skipped >= 8
    assert int(batches[-1]["data/skipped_shards"]) == 0
    assert np.all(np.diff([int(b["data/skipped"]) for b in batches]) >= 0)  # cumulative
    for path in json_data["bad"]:
        assert any(path in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), path


def test_webdataset_shards_txt_and_json_captions_bad_members_and_bad_shards(shards, caplog):
    caplog.set_level(logging.WARNING)
    source = open_source(make_config(kind="webdataset", path=shards["pattern"]).data, True, 0, 1)
    assert source.skipped_shards == 3  # truncated 00003, garbage 00004, missing 00005
    assert len(source) == 6 * 3 + 2  # 00003 keeps key 0 whole and key 1 without a caption
    assert source[6].captions == ["Shard 1, image 0."]  # from the .json (no .txt in shard 1 for i < 4)
    assert source[0].image_id == 0 and source[6].image_id == 10000
    config = make_config(kind="webdataset", path=shards["pattern"])
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    batches = take(iterator, 9)
    for batch in batches:
        check_batch(batch, 4)
    ids = np.concatenate([b["image_id"] for b in batches])
    assert sorted(ids[:len(shards["good"])]) == shards["good"]
    assert int(batches[-1]["data/skipped_shards"]) == 3 and int(batches[-1]["data/skipped"]) >= 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    for name in ("00003.tar", "00004.tar", "00005.tar", "00000.tar:000000005", "00002.tar:000020004",
                 "00003.tar:000030001"):
        assert name in messages, name


def test_tfds_array_record_source(tfds_dir, caplog):
    caplog.set_level(logging.WARNING)
    config = make_config(kind="tfds", path="tiny_captions_data", tfds_data_dir=tfds_dir, batch_size=3)
    batches = take(make_train_iterator(config, process_index=0, process_count=1), 6)
    for batch in batches:
        check_batch(batch, 3)
    ids = np.concatenate([b["image_id"] for b in batches])
    assert sorted(ids[:9]) == [500 + i for i in range(10) if i != 4]
    assert int(batches[-1]["data/skipped"]) >= 1 and "tiny_captions_data[train]" in caplog.text
    evaluation = list(make_eval_dataset(config, process_index=0, process_count=1))
    assert len(evaluation) == 1 and evaluation[0]["mask"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="config.data.caption_key='text'"):
        make_train_iterator(make_config(kind="tfds", path="tiny_captions_data", tfds_data_dir=tfds_dir,
                                        caption_key="text"), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="config.data.path: tfds dataset no_such_data"):
        make_train_iterator(make_config(kind="tfds", path="no_such_data", tfds_data_dir=tfds_dir),
                            process_index=0, process_count=1)


def test_synthetic_kind_writes_then_reads_like_json_without_flips(tmp_path):
    config = make_config(kind="synthetic", path=str(tmp_path / "syn"), batch_size=2)
    config.data.synthetic.update(num_train=3, num_val=3, num_test=1, image_size=32)
    batches = take(make_train_iterator(config, process_index=0, process_count=1), 3)  # 6 entries: 3 images x 2
    for batch in batches:
        check_batch(batch, 2)
    assert sorted(np.concatenate([b["image_id"] for b in batches])) == sorted([10_000_000 + i for i in range(3)] * 2)
    assert not flip_enabled(config.data)  # left/right captions stay true
    mtime = os.path.getmtime(tmp_path / "syn" / "dataset_info.json")
    evaluation = list(make_eval_dataset(config, process_index=0, process_count=1))  # reuses the files
    assert os.path.getmtime(tmp_path / "syn" / "dataset_info.json") == mtime
    assert [b["image_id"].tolist() for b in evaluation] == [[20_000_000, 20_000_001], [20_000_002, -1]]
    assert [b["mask"].tolist() for b in evaluation] == [[1, 1], [1, 0]]


# ----------------------------------------------------------------------------- order, hosts, resume


def test_same_seed_same_batches_other_seed_differs(json_data):
    config = make_config(kind="json", path=json_data["clean"], image_root=json_data["images"])
    first = take(make_train_iterator(config, process_index=0, process_count=1), 4)
    assert_batches_equal(first, take(make_train_iterator(config, process_index=0, process_count=1), 4))
    config.data.seed = 4
    other = take(make_train_iterator(config, process_index=0, process_count=1), 4)
    assert any((a["image_id"] != b["image_id"]).any() for a, b in zip(first, other))


@pytest.mark.parametrize("kind", ["json", "webdataset"])
def test_two_processes_read_disjoint_parts_that_cover_everything(json_data, shards, kind):
    if kind == "json":
        data, expected = dict(path=json_data["clean"], image_root=json_data["images"]), set(range(100, 112))
        epoch = (6, 6)  # every other entry
    else:
        data, expected = dict(path=shards["clean"]), {i for i in shards["good"] if i < 20000}
        epoch = (5, 6)  # one shard each; 00000 has a corrupt image
    seen = []
    for process in range(2):
        iterator = make_train_iterator(make_config(kind=kind, **data, batch_size=2), process_index=process,
                                       process_count=2)
        seen.append({int(next(iterator)["image_id"][0]) for _ in range(epoch[process])})  # local batch 1
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == expected


def test_batch_size_must_divide_among_processes(json_data):
    config = make_config(kind="json", path=json_data["clean"], image_root=json_data["images"], batch_size=6)
    with pytest.raises(ValueError, match="config.data.batch_size=6 is not divisible by the process count 4"):
        make_train_iterator(config, process_index=1, process_count=4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_gives_the_uninterrupted_batches(json_data, num_workers):
    config = make_config(kind="json", path=json_data["train"], image_root=json_data["images"], batch_size=5,
                         num_workers=num_workers)
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))  # what grain.checkpoint / orbax store
    expected = take(iterator, 4)  # crosses the epoch boundary (12 good examples per epoch)
    resumed = make_train_iterator(config, process_index=0, process_count=1)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 4), expected)
    assert int(expected[-1]["data/skipped"]) >= 8  # two whole epochs passed; the count resumes too
    if num_workers:
        fresh = make_train_iterator(config, process_index=0, process_count=1)  # deterministic with workers
        assert_batches_equal(take(fresh, 6)[2:], expected)
        for it in (iterator, resumed, fresh):
            it.close()


# ----------------------------------------------------------------------------- evaluation and global arrays


def test_eval_is_per_image_padded_masked_and_equal_across_processes(json_data, caplog):
    config = make_config(kind="json", path=json_data["train"], eval_path=json_data["val"],
                         image_root=json_data["images"], batch_size=4)
    single = list(make_eval_dataset(config, process_index=0, process_count=1))
    assert [b["image_id"].tolist() for b in single] == [[7, 8, 9, 10], [11, -1, -1, -1]]  # junk image masked
    assert [int(b["data/skipped"]) for b in single] == [0, 1] and "junk.jpg" in caplog.text
    ids = [b["input_ids"][b["mask"] == 1] for b in single]
    assert np.array_equal(ids[0], np.stack([make_tokens(f"val {i} 0") for i in range(4)]))
    per_process = [list(make_eval_dataset(config, process_index=p, process_count=2)) for p in range(2)]
    assert len(per_process[0]) == len(per_process[1]) == 2  # 3 and 3 records over local batches of 2
    masked = [i for batches in per_process for b in batches for i in b["image_id"][b["mask"] == 1].tolist()]
    assert sorted(masked) == [7, 8, 9, 10, 11]


def make_tokens(text):
    return QFormerTokenizer(max_len=16)([text])["input_ids"][0]


def test_to_global_batch_shards_the_batch_axis_over_the_mesh(json_data):
    config = make_config(kind="json", path=json_data["clean"], image_root=json_data["images"], batch_size=8)
    local = next(make_train_iterator(config, process_index=0, process_count=1))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = to_global_batch(local, mesh, PartitionSpec("data"))
    assert batch["pixel_values"].shape == (8, 3, SIZE, SIZE)
    assert batch["pixel_values"].sharding.spec == PartitionSpec("data")
    assert len(batch["input_ids"].addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), local["input_ids"])
    assert batch["data/skipped"] == local["data/skipped"]  # per-process metrics pass through


# ----------------------------------------------------------------------------- start-up errors


def test_start_up_errors_name_the_config_key(json_data, shards, tmp_path):
    def make(**data):
        return make_train_iterator(make_config(**data), process_index=0, process_count=1)

    with pytest.raises(ValueError, match=r"config.data.kind='foo' is not one of \('synthetic'"):
        make(kind="foo", path="x")
    with pytest.raises(ValueError, match="config.data.path: /no/such.json does not exist"):
        make(kind="json", path="/no/such.json")
    with pytest.raises(ValueError, match="config.data.image_root: /no/root does not exist"):
        make(kind="json", path=json_data["train"], image_root="/no/root")
    with pytest.raises(ValueError, match=r"config.data.path: no shard of .*\{00010..00012\}.tar exists"):
        make(kind="webdataset", path=str(shards["root"] / "{00010..00012}.tar"))
    with pytest.raises(ValueError, match="config.data.eval_path is empty"):
        make_eval_dataset(make_config(kind="json", path=json_data["train"], image_root=json_data["images"]),
                          process_index=0, process_count=1)
    with pytest.raises(ValueError, match="config.data.min_scale"):
        make(kind="json", path=json_data["train"], image_root=json_data["images"], min_scale=0.0)
    # A root that is not the folder the file's paths start from: its first image is looked up at start-up.
    with pytest.raises(ValueError, match=f"config.data.image_root: .*, the first image {re.escape(json_data['train'])} "
                                         "names, does not exist"):
        make(kind="json", path=json_data["train"], image_root=str(tmp_path))
    # Nothing readable: every shard broken.
    with pytest.raises(ValueError, match="nothing readable|holds no examples"):
        make(kind="webdataset", path=str(shards["root"] / "{00004..00005}.tar"))


def test_shard_patterns_expand_ranges_lists_and_globs(shards):
    root = shards["root"]
    assert expand_pattern(str(root / "{00000..00002}.tar")) == [str(root / f"0000{i}.tar") for i in range(3)]
    assert expand_pattern(str(root / "{00001,00003}.tar") + "::" + str(root / "0000[4].tar")) == [
        str(root / "00001.tar"), str(root / "00003.tar"), str(root / "00004.tar")]
    assert expand_pattern("s/{8..10}/{a,b}.tar") == ["s/8/a.tar", "s/8/b.tar", "s/9/a.tar", "s/9/b.tar",
                                                     "s/10/a.tar", "s/10/b.tar"]


def test_image_ids_are_namespaced_per_source_so_equal_numbers_from_two_sources_differ(tmp_path):
    """COCO image 7 and Visual Genome image 7 once got the same id: ITC positives of each other."""
    for name in ("coco", "vg"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "7.jpg").write_bytes(encoded_image(1))
    (tmp_path / "coco.json").write_text(json.dumps([{"image": "coco/7.jpg", "caption": "a", "image_id": 7},
                                                    {"image": "coco/7.jpg", "caption": "b", "image_id": 7}]))
    (tmp_path / "vg.json").write_text(json.dumps([{"image": "vg/7.jpg", "caption": "c", "image_id": 7}]))
    files = [str(tmp_path / "coco.json"), str(tmp_path / "vg.json")]
    joined = open_source(make_config(kind="json", path="::".join(files), image_root=str(tmp_path)).data, True, 0, 1)
    ids = [joined[i].image_id for i in range(3)]
    assert ids[0] == ids[1] != ids[2]  # one image keeps one id; the other source's 7 is another image
    single = open_source(make_config(kind="json", path=files[0], image_root=str(tmp_path)).data, True, 0, 1)
    assert single[0].image_id == 7  # one source keeps its ids

    for name in ("cc3m", "cc12m"):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            add_member(tar, "000000007.jpg", encoded_image(2))
            add_member(tar, "000000007.txt", b"a caption")
    pattern = f"{tmp_path}/cc3m.tar::{tmp_path}/cc12m.tar"
    shards = open_source(make_config(kind="webdataset", path=pattern).data, True, 0, 1)
    assert len(shards) == 2 and shards[0].image_id != shards[1].image_id
    assert expand_pattern(pattern) == [f"{tmp_path}/cc3m.tar", f"{tmp_path}/cc12m.tar"]


def test_webdataset_shards_in_a_bucket_hold_the_records_and_skips_of_the_same_shards_on_disk(shards):
    """The shards (a truncated one, one that is not a tar, a missing one) copied into a GCS-compatible server
    on 127.0.0.1: indexing, ranged reads and skip counting as on local disk; brace ranges and globs expand.
    (The source, read here record by record, is what the pipeline's read-ahead threads read.)"""
    with gcs_emulator.running("shards"):
        for path in sorted(shards["root"].glob("*.tar")):
            storage.copy(str(path), f"gs://shards/wds/{path.name}")
        assert expand_pattern("gs://shards/wds/0000[0-1].tar") == expand_pattern("gs://shards/wds/{00000..00001}.tar")
        local, remote = (open_source(make_config(kind="webdataset", path=path).data, True, 0, 1)
                         for path in (shards["pattern"], "gs://shards/wds/{00000..00005}.tar"))
        assert len(remote) == len(local) and remote.skipped_shards == local.skipped_shards == 3
        for index in range(len(local)):
            want, got = (_record_or_error(source, index) for source in (local, remote))
            assert got == want, (index, got, want)


def _record_or_error(source, index):
    try:
        return source[index]
    except (OSError, ValueError) as e:
        return type(e).__name__
