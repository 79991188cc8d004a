"""Multi-worker input: each worker reads and decodes only its own shard of the data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import make_image_folder, write_image
from tftoolkit.data import WorkerShare, load_data
from tftoolkit.data.record import SplitRecord
from tftoolkit.data.scan import scan_image_folder
from tftoolkit.recipe import DataConfig, ModelConfig, Recipe, TrainConfig


def _numbered_folder(root, n_per_class=25):
    """Images whose every pixel is 5 x their number, so a batch says which files it holds."""
    for label in range(2):
        for i in range(n_per_class):
            number = label * n_per_class + i
            write_image(root / f"c{label}" / f"{i:02d}.png", np.full((8, 8, 3), 5 * number,
                                                                    np.uint8))
    return root


def _numbers(batch) -> list[int]:
    return np.round(np.asarray(batch[0])[:, 0, 0, 0] / 5).astype(int).tolist()


def _context(workers, worker, replicas_per_worker=1):
    return tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                      num_replicas_in_sync=workers * replicas_per_worker)


def _folder_data(folder, tmp_path, cache="memory"):
    recipe = Recipe(name="sharded", data=DataConfig(
        source="folder", dir=str(folder), image_size=8, validation_fraction=0.2,
        test_fraction=0.0, cache=cache, cache_dir=str(tmp_path / "caches")),
        model=ModelConfig(architecture="cnn"), train=TrainConfig(batch_size=8))
    return load_data(recipe, 8)


def test_worker_shards_are_disjoint_and_cover_the_data(tmp_path):
    data = _folder_data(_numbered_folder(tmp_path / "numbers"), tmp_path)
    train_numbers = set(_numbers(next(iter(data.dataset("train", batch_size=100)))))
    val_numbers = set(_numbers(next(iter(data.dataset("val", batch_size=100)))))
    assert len(train_numbers) == 40 and len(val_numbers) == 10
    steps = data.steps_per_epoch("train", 8)

    # 2 workers x 2 replicas: 4 training shards of 10, one per replica, in batches of 2
    shards = []
    for worker in range(2):
        stream = data.dataset("train", training=True, input_context=_context(2, worker, 2))
        batches = list(stream.take(2 * steps))     # one epoch: each local replica in turn
        assert all(len(b[0]) == 2 for b in batches)
        shards += [sum((_numbers(b) for b in batches[r::2]), []) for r in range(2)]
        second_epoch = list(stream.skip(2 * steps).take(2 * steps))
        assert sorted(sum(map(_numbers, second_epoch), [])) == sorted(sum(shards[-2:], []))
    for shard in shards:
        assert len(shard) == len(set(shard)) == 10
    assert set().union(*map(set, shards)) == train_numbers
    assert sum(map(len, shards)) == len(train_numbers)  # hence disjoint

    evaluated = [sum(map(_numbers, data.dataset("val", input_context=_context(2, w, 2))), [])
                 for w in range(2)]
    assert not set(evaluated[0]) & set(evaluated[1])
    assert sorted(evaluated[0] + evaluated[1]) == sorted(val_numbers)
    assert any("shard 2 of 4, 10 examples" in note for note in data.notes)


def test_uneven_training_shards_are_padded_to_the_same_number_of_batches(tmp_path):
    data = _folder_data(_numbered_folder(tmp_path / "numbers", n_per_class=24), tmp_path)
    assert len(data.splits["train"]) == 38        # 19 + 19 over 3 workers: 13, 13, 12
    steps = data.steps_per_epoch("train", 6)
    seen = []
    for worker in range(3):
        stream = data.dataset("train", training=True, batch_size=6,
                              input_context=_context(3, worker))
        epoch = sum(map(_numbers, stream.take(steps)), [])
        assert len(epoch) == 13                   # 7 batches: 6 of 2, 1 of 1
        seen.append(epoch)
    assert sorted(set().union(*map(set, seen))) == sorted(
        _numbers(next(iter(data.dataset("train", batch_size=100)))))
    assert sorted(map(len, map(set, seen))) == [12, 13, 13]  # one repeat, on the short one


def test_a_worker_never_reads_another_workers_files(tmp_path):
    folder = _numbered_folder(tmp_path / "numbers")
    data = _folder_data(folder, tmp_path, cache="off")
    first = data.dataset("train", training=True, input_context=_context(2, 0))
    mine = set(sum(map(_numbers, first.take(5)), []))
    assert len(mine) == 20
    for path in data.splits["train"].paths:  # break every training file worker 0 lacks
        number = int(np.asarray(tf.io.decode_png(tf.io.read_file(path)))[0, 0, 0]) // 5
        if number not in mine:
            open(path, "wb").write(b"broken")
    again = data.dataset("train", training=True, input_context=_context(2, 0))
    assert set(sum(map(_numbers, again.take(10)), [])) == mine  # two epochs, no error
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(data.dataset("train", batch_size=100))


def test_tfds_records_are_sharded_before_decoding():
    import tensorflow_datasets as tfds

    import tftoolkit

    recipe = tftoolkit.load_recipe("flowers", ["data.max_examples=0"])
    with tfds.testing.mock_data(num_examples=20):
        data = load_data(recipe, 16)
        assert data.splits["train"].dataset.element_spec[0].dtype == tf.string  # encoded

        def digests(dataset):
            return [hash(np.asarray(x).tobytes()) for b in dataset for x in b[0]]

        everything = digests(data.dataset("val", batch_size=4))
        shards = [digests(data.dataset("val", batch_size=4, input_context=_context(2, w)))
                  for w in range(2)]
    assert len(everything) == len(data.splits["val"])
    assert sorted(shards[0] + shards[1]) == sorted(everything)
    assert abs(len(shards[0]) - len(shards[1])) <= 1


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_uneven_tfds_training_shards_are_padded_like_files(cache):
    import tensorflow_datasets as tfds

    import tftoolkit

    recipe = tftoolkit.load_recipe("flowers", ["data.max_examples=0", f"data.cache={cache}"])
    with tfds.testing.mock_data(num_examples=20):
        data = load_data(recipe, 16)
        n = len(data.splits["train"])
        assert n % 3  # 20 records (mock data) over 3 workers: 7, 7 and 6, padded to 7

        def digests(batches):
            return [hash(np.asarray(x).tobytes()) for b in batches for x in b[0]]

        everything = digests(data.dataset("train", batch_size=4))
        steps = data.steps_per_epoch("train", 6)
        seen = []
        for worker in range(3):
            stream = data.dataset("train", training=True, batch_size=6,
                                  input_context=_context(3, worker))
            two_epochs = digests(stream.take(2 * steps))
            assert len(two_epochs) == 2 * -(-n // 3)
            seen.append(set(two_epochs))
    assert sorted(map(len, seen)) == [6, 7, 7]      # one repeat on the short shard
    assert set().union(*seen) == set(everything)   # together: every record


def test_a_shared_scan_decodes_only_its_share_and_agrees_with_a_full_scan(tmp_path,
                                                                          monkeypatch):
    from tftoolkit.data import scan

    folder = make_image_folder(tmp_path / "shapes", per_class=6)
    (folder / "circle" / "bad.jpg").write_bytes(b"no image")
    (folder / "square" / "empty.png").write_bytes(b"")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    full = scan_image_folder(paths)
    assert len(full.bad) == 2

    checked = []
    original = scan._check
    monkeypatch.setattr(scan, "_check", lambda path, *limit: checked.append(path)
                        or original(path, *limit))
    given = []
    for worker in range(2):  # what each worker gives to the sum over the workers
        scan_image_folder(paths, share=WorkerShare(worker, 2, lambda own: given.append(own)
                                                   or own))
    for worker in range(2):
        checked.clear()
        result = scan_image_folder(paths, share=WorkerShare(
            worker, 2, lambda own: own + given[1 - worker]))
        others_bad = [p for p in paths[1 - worker::2] if str(p) in dict(full.bad)]
        assert sorted(checked) == sorted(paths[worker::2] + others_bad)
        assert result.good == full.good and result.bad == full.bad
        np.testing.assert_array_equal(result.digests, full.digests)  # of every good file
    assert [hashlib.sha256(Path(p).read_bytes()).digest() for p in full.good] == [
        d.tobytes() for d in full.digests]


WORKER = """
import json, sys
import tftoolkit
result = tftoolkit.train(sys.argv[1], {"train.run_dir": sys.argv[2]})
json.dump({"notes": result.notes, "metrics": result.metrics, "run_dir": str(result.run_dir),
           "history": result.history, "bad": result.info.bad_files}, open(sys.argv[3], "w"))
"""


def _train(recipe_file, out_dir, workers: int = 2) -> list[dict]:
    """Train ``recipe_file`` on ``workers`` localhost workers (1: a plain process); the
    results of each."""
    from test_runtime import _free_ports

    addresses = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    procs = [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(recipe_file), str(out_dir / "runs"),
         str(out_dir / f"worker{i}.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env if workers == 1 else {**env, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})})
        for i in range(workers)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return [json.loads((out_dir / f"worker{i}.json").read_text()) for i in range(workers)]


FOLDER_RECIPE = """
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
RECIPE = Recipe(name="folder_workers",
    data=DataConfig(source="folder", dir={folder!r}, image_size=32, validation_fraction=0.25,
                    test_fraction=0, on_bad_file="skip", cache={cache!r},
                    cache_dir={cache_dir!r}),
    model={model},
    train=TrainConfig(epochs=2, batch_size=8, verbose=0),
    export=ExportConfig(enabled=False))
"""


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_two_workers_on_an_image_folder_train_on_their_own_shards(tmp_path, cache):
    import keras

    from tftoolkit.recipe import load_recipe
    from tftoolkit.training.runner import evaluate_model

    folder = make_image_folder(tmp_path / "shapes", per_class=24)
    (folder / "circle" / "broken.jpg").write_bytes(b"not an image")
    recipe_file = tmp_path / "folder_workers.py"
    recipe_file.write_text(FOLDER_RECIPE.format(
        folder=str(folder), cache=cache, cache_dir=str(tmp_path / "caches"),
        model='ModelConfig(architecture="cnn")'))
    chief, other = _train(recipe_file, tmp_path)
    # the scan was shared, and both workers skip the one bad file
    assert [p for p, _ in chief["bad"]] == [p for p, _ in other["bad"]] == [
        str(folder / "circle" / "broken.jpg")]
    for index, result in ((1, chief), (2, other)):
        assert any(f"data cache for train (shard {index} of 2, 18 examples)" in note
                   for note in result["notes"]), result["notes"]
        assert any(f"data cache for val (shard {index} of 2, 6 examples)" in note
                   for note in result["notes"]), result["notes"]
    assert chief["metrics"]["val_loss"] == other["metrics"]["val_loss"]
    # every worker holds the same splits, those of one process
    recorded = SplitRecord.read(chief["run_dir"])
    assert recorded.rows == SplitRecord.read(other["run_dir"]).rows
    assert recorded.rows == SplitRecord.of(load_data(load_recipe(str(recipe_file)),
                                                     32).splits).rows
    if cache == "disk":  # on one filesystem, each worker writes only caches of its own
        keys = [note.split("caches/")[1].split(" ")[0]
                for result in (chief, other) for note in result["notes"]
                if ": disk, " in note]
        assert len(keys) == len(set(keys)) >= 4, keys

    # The validation figures, summed over the two shards, are those of the whole split.
    recipe = load_recipe(str(recipe_file))
    model = keras.models.load_model(f"{chief['run_dir']}/model.keras")
    alone = evaluate_model(model, load_data(recipe, 32), recipe, 8)
    assert alone["val_accuracy"] == pytest.approx(chief["metrics"]["val_accuracy"], abs=1e-6)
    assert alone["val_loss"] == pytest.approx(chief["metrics"]["val_loss"], rel=1e-5)


def test_two_workers_share_the_frozen_backbone_and_train_like_one_process(tmp_path,
                                                                         imported_mobilenet):
    folder = make_image_folder(tmp_path / "shapes", per_class=24)
    recipe_file = tmp_path / "folder_workers.py"
    recipe_file.write_text(FOLDER_RECIPE.format(
        folder=str(folder), cache="memory", cache_dir=str(tmp_path / "caches"),
        model='ModelConfig(architecture="mobilenet_v2", weights="imagenet-torchvision", '
              'mode="feature_extraction")'))
    (tmp_path / "two").mkdir()
    chief, other = _train(recipe_file, tmp_path / "two")
    assert any("each of 2 workers ran the frozen part on its share" in note
               for note in chief["notes"]), chief["notes"]
    (tmp_path / "one").mkdir()
    (alone,) = _train(recipe_file, tmp_path / "one", workers=1)
    # The features, gathered from the two workers' shares, are those one process computes,
    # and the head solved on them is the same on every worker.
    assert any("head solved on" in note for note in chief["notes"]), chief["notes"]
    for key in ("val_loss", "val_accuracy", "baseline_probe_val_accuracy"):
        assert chief["metrics"][key] == pytest.approx(alone["metrics"][key], rel=1e-3)
        assert other["metrics"][key] == pytest.approx(chief["metrics"][key], rel=1e-6)


class _KeyInGreen:
    """A per-example augmentation that writes the index of its key into the green
    channel, so that a batch says which keys its examples were augmented with."""

    spatial = False  # it moves no targets

    def window_fn(self, key):
        return None

    def recolor(self, image, key):
        image = tf.cast(image, tf.float32)
        green = tf.fill(tf.shape(image)[:2], tf.cast(key[1], tf.float32))
        return tf.stack([image[..., 0], green, image[..., 2]], axis=-1)


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_training_shards_key_each_example_by_its_position_in_the_whole_split(tmp_path,
                                                                            cache):
    from tftoolkit.augment.stateless import PipelineAugment

    data = _folder_data(_numbered_folder(tmp_path / "numbers"), tmp_path, cache=cache)
    augment = PipelineAugment(per_example=_KeyInGreen(), per_batch=None)

    def keys(input_context=None, batch_size=8) -> dict[int, int]:
        stream = data.dataset("train", training=True, augment=augment,
                              batch_size=batch_size, input_context=input_context)
        batch = next(iter(stream))
        return dict(zip(_numbers(batch), np.asarray(batch[0])[:, 0, 0, 1].astype(int)))

    whole = keys(batch_size=40)  # one epoch of the split in one process
    assert sorted(whole.values()) == list(range(40))
    shards = [keys(_context(2, worker), batch_size=40) for worker in range(2)]
    # each shard augments its examples as the whole split does: never with one
    # another's keys (before, both shards keyed their examples 0, 1, ... alike)
    assert not set(shards[0].values()) & set(shards[1].values())
    for shard in shards:
        assert shard == {number: whole[number] for number in shard}


def _numbered_table(root, n=40):
    """A CSV of ``n`` images whose pixels are 5 x their number (every fifth one in the
    ``val`` split by a split column), tagged ``even``/``odd`` and ``big`` (from n / 2 on):
    a multi-label table whose labels say which image they belong to."""
    rows = ["file,tags,split"]
    for number in range(n):
        write_image(root / "images" / f"{number:02d}.png",
                    np.full((8, 8, 3), 5 * number, np.uint8))
        tags = ["even" if number % 2 == 0 else "odd"] + (["big"] if number >= n // 2 else [])
        rows.append(f"images/{number:02d}.png,{' '.join(tags)},"
                    f"{'val' if number % 5 == 0 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_csv_worker_shards_are_disjoint_cover_the_table_and_keep_their_labels(tmp_path):
    recipe = Recipe(name="table", data=DataConfig(
        source="csv", csv=str(_numbered_table(tmp_path / "table")), path_column="file",
        label_column="tags", label_delimiter=" ", split_column="split", test_fraction=0.0,
        image_size=8, cache="off"), model=ModelConfig(architecture="cnn"),
        train=TrainConfig(batch_size=8))
    data = load_data(recipe, 8)
    assert data.info.class_names == ["big", "even", "odd"]
    steps = data.steps_per_epoch("train", 8)
    shards = []
    for worker in range(2):
        stream = data.dataset("train", training=True, input_context=_context(2, worker))
        shard = []
        for images, labels in stream.take(steps):   # one epoch of this worker
            for number, row in zip(_numbers((images,)), np.asarray(labels)):
                assert row.tolist() == [number >= 20, number % 2 == 0, number % 2 == 1]
                shard.append(number)
        assert len(shard) == len(set(shard)) == 16
        shards.append(shard)
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == [n for n in range(40) if n % 5]
    evaluated = [sum(map(_numbers, data.dataset("val", input_context=_context(2, w))), [])
                 for w in range(2)]
    assert not set(evaluated[0]) & set(evaluated[1])
    assert sorted(evaluated[0] + evaluated[1]) == list(range(0, 40, 5))
    # a worker reads only its own rows' files: break every other one, it still runs
    for path in data.splits["train"].paths:
        number = int(np.asarray(tf.io.decode_png(tf.io.read_file(path)))[0, 0, 0]) // 5
        if number not in shards[0]:
            open(path, "wb").write(b"broken")
    again = data.dataset("train", training=True, input_context=_context(2, 0))
    assert sorted(sum(map(_numbers, again.take(steps)), [])) == sorted(shards[0])
