"""Runtime: strategies, mixed precision, seeded reproducibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import tftoolkit


def test_two_seeded_deterministic_runs_give_identical_weights(quiet):
    overrides = {**quiet, "train.deterministic": True, "train.epochs": 5}
    first = tftoolkit.train("mlp", overrides)
    second = tftoolkit.train("mlp", overrides)
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    runtime = json.loads((first.run_dir / "runtime.json").read_text())
    assert runtime["deterministic"] is True
    assert runtime["strategy"] == "single device"


def test_mixed_bfloat16_trains_and_exports(image_folder, quiet):
    import tensorflow as tf

    from tftoolkit.recipe import DataConfig, ModelConfig, Recipe, TrainConfig

    recipe = Recipe(name="bf16", data=DataConfig(source="folder", dir=str(image_folder),
                                                 image_size=32),
                    model=ModelConfig(architecture="cnn", filters=[8]),
                    train=TrainConfig(epochs=1, batch_size=8, precision="mixed_bfloat16"))
    result = tftoolkit.train(recipe, quiet)
    assert result.model.get_layer("conv_0").compute_dtype == "bfloat16"
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert "mixed precision" in card["parity"]["note"]
    # The same weights computed in float32 differ from the bf16 model (bf16 really ran)...
    float_model = tftoolkit.build_model(recipe, result.info)  # the policy is float32 again
    float_model.set_weights(result.model.get_weights())
    x = np.load(result.run_dir / "parity_inputs.npy")
    bf16, f32 = np.asarray(result.model(x)), np.asarray(float_model(x))
    assert float_model.get_layer("conv_0").compute_dtype == "float32"
    assert 1e-6 < np.abs(bf16 - f32).max() < 5e-2
    # ...and the export serves the bf16 model's classes.
    served = tf.saved_model.load(str(result.export_dir)).signatures["serving_default"]
    np.testing.assert_array_equal(served(images=tf.constant(x))["class_id"].numpy(),
                                  bf16.argmax(axis=1))


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tftoolkit
result = tftoolkit.train("mlp", {"train.distribute": "mirrored", "train.epochs": 3,
                                  "train.run_dir": sys.argv[1], "train.verbose": 0,
                                  "train.scale_lr": True, "train.learning_rate": 0.1})
print(json.dumps({"notes": result.notes, "loss": result.history["loss"],
                  "learning_rate": float(result.model.optimizer.learning_rate.numpy())}))
"""


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "strategy: MirroredStrategy over 2 CPU devices" in out["notes"]
    assert out["loss"][-1] < out["loss"][0]
    # train.scale_lr: 0.1 times 2 replicas
    assert out["learning_rate"] == pytest.approx(0.2)
    assert "learning rates scaled by 2 replicas (train.scale_lr)" in out["notes"]


RESUMABLE = '''
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, Recipe,
                              RegularizeConfig, TrainConfig)
RECIPE = Recipe(
    name="resumable",
    data=DataConfig(source="synthetic", name="sine_product", num_examples=24000,
                    validation_fraction=0.1),
    model=ModelConfig(architecture="mlp", hidden=[32, 16], activation="tanh"),
    regularize=RegularizeConfig(dropout=0.1),
    train=TrainConfig(optimizer="sgd", momentum=0.9, learning_rate=0.02, batch_size=32,
                      epochs=4, loss="mse", deterministic=True, verbose=2),
    export=ExportConfig(enabled=False))
'''


def _final_weights(run_root):
    model_file = next(run_root.rglob("model.keras"))
    return keras.models.load_model(model_file, compile=False).get_weights()


def test_sigkill_mid_run_then_the_same_command_resumes_and_matches(tmp_path):
    import signal
    import time

    recipe = tmp_path / "resumable.py"
    recipe.write_text(RESUMABLE)

    def command(root):
        return [sys.executable, "-m", "tftoolkit", "train", str(recipe), "--set",
                f"train.run_dir={root}"]

    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(command(killed_root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    progress = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed_root.rglob("progress.json"))
        if found and json.loads(found[0].read_text())["next_epoch"] >= 2:
            proc.send_signal(signal.SIGKILL)
            progress = json.loads(found[0].read_text())
            break
        time.sleep(0.05)
    proc.wait()
    assert progress is not None, "the run finished or never checkpointed before the kill"
    assert not list(killed_root.rglob("metrics.json"))

    resumed = subprocess.run(command(killed_root), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    epoch_line = [line for line in resumed.stdout.splitlines() if "resuming" in line][0]
    assert 2 <= int(epoch_line.split("at epoch ")[1].split()[0]) < 4
    assert len(list((killed_root / "resumable").iterdir())) == 1  # the same run directory
    assert "Epoch 1/4" not in resumed.stdout  # did not restart from epoch 0

    clean = subprocess.run(command(tmp_path / "clean"), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    for a, b in zip(_final_weights(killed_root), _final_weights(tmp_path / "clean")):
        np.testing.assert_array_equal(a, b)
    history = (next(killed_root.rglob("history.csv"))).read_text().splitlines()
    assert [int(row.split(",")[0]) for row in history[1:]][-1] == 3


def test_epoch_state_round_trips_and_refuses_another_model(tmp_path):
    from tftoolkit.errors import RecipeError
    from tftoolkit.rundir import Progress, RunDir
    from tftoolkit.training.checkpoint import SaveProgress, restore_state

    def compiled(units):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(units),
                                  keras.layers.Dropout(0.5), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.1), "mse")
        return model

    x, y = np.random.default_rng(0).normal(size=(2, 16, 2)).astype("float32")
    trained = compiled(3)
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    trained.fit(x, y[:, :1], epochs=2, verbose=0, callbacks=[SaveProgress(run, 0)])
    progress = run.progress()
    assert progress == Progress(0, 2, "checkpoints/state-0-2.npz")
    # the previous epoch's file is kept until the next one is complete
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "state-0-1.npz", "state-0-2.npz"]

    resumed = compiled(3)
    restore_state(run, progress, resumed)
    for a, b in zip([*trained.variables, *trained.optimizer.variables],
                    [*resumed.variables, *resumed.optimizer.variables]):
        np.testing.assert_array_equal(a.value.numpy(), b.value.numpy())
    with pytest.raises(RecipeError, match="shape"):
        restore_state(run, progress, compiled(4))


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one_and_says_so(quiet):
    from tftoolkit.rundir import Progress, RunDir

    overrides = {**quiet, "train.deterministic": True, "train.epochs": 3}
    clean = tftoolkit.train("mlp", overrides)
    run = RunDir(clean.run_dir)
    # as if killed (or out of disk) while the last epoch's file reached the disk
    (run / "metrics.json").unlink()
    run.write_progress(Progress(0, 3, "checkpoints/state-0-3.npz"))
    newest = run / "checkpoints" / "state-0-3.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resumed = tftoolkit.train("mlp", overrides)
    assert resumed.run_dir == clean.run_dir
    notes = " ".join(resumed.notes)
    assert "state-0-3.npz is damaged" in notes and "previous one" in notes
    assert "state-0-2.npz" in notes and "at epoch 2" in notes
    for a, b in zip(clean.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # epoch 3 trained again


def test_a_resume_past_a_damaged_checkpoint_lists_each_epoch_once_in_its_history(quiet):
    import csv

    from tftoolkit.rundir import Progress, RunDir

    overrides = {**quiet, "train.epochs": 3}
    clean = tftoolkit.train("mlp", overrides)
    run = RunDir(clean.run_dir)
    (run / "metrics.json").unlink()  # killed as the last epoch's file reached the disk
    run.write_progress(Progress(0, 3, "checkpoints/state-0-3.npz"))
    newest = run / "checkpoints" / "state-0-3.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resumed = tftoolkit.train("mlp", overrides)
    assert any("resuming" in note and "at epoch 2" in note for note in resumed.notes)
    with open(run / "history.csv", newline="") as f:
        epochs = [row["epoch"] for row in csv.DictReader(f)]
    assert epochs == ["0", "1", "2"]  # epoch 3 (index 2) trained again, listed once
    assert len(resumed.history["loss"]) == 3


def test_a_run_directory_being_written_is_not_adopted_by_a_second_process(tmp_path, quiet):
    from tftoolkit.errors import RunDirError

    first = tftoolkit.train("mlp", {**quiet, "train.epochs": 1})
    (first.run_dir / "metrics.json").unlink()  # unfinished, as while it trains
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tftoolkit.rundir import RunDir; "
         "RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)",
         str(first.run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"{first.run_dir}.*live run \(pid "
                                              rf"{holder.pid} on .*train\.resume=false"):
            tftoolkit.train("mlp", {**quiet, "train.epochs": 1})
    finally:
        holder.kill()
        holder.wait()
    # the operating system released the dead process's lock: the run resumes
    assert tftoolkit.train("mlp", {**quiet, "train.epochs": 1}).run_dir == first.run_dir


def test_resume_false_starts_a_fresh_run(tmp_path, quiet):
    (tmp_path / "runs" / "mlp").mkdir(parents=True)
    first = tftoolkit.train("mlp", {**quiet, "train.epochs": 1})
    (first.run_dir / "metrics.json").unlink()  # pretend it was interrupted
    again = tftoolkit.train("mlp", {**quiet, "train.epochs": 1})
    assert again.run_dir == first.run_dir
    (again.run_dir / "metrics.json").unlink()
    fresh = tftoolkit.train("mlp", {**quiet, "train.epochs": 1, "train.resume": False})
    assert fresh.run_dir != first.run_dir


class _CountingSummary:
    """``tf.summary`` that counts its ``scalar`` calls."""

    def __init__(self):
        import tensorflow as tf

        self.module, self.scalars = tf.summary, 0

    def scalar(self, *args, **kwargs):
        self.scalars += 1
        return self.module.scalar(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


def test_tensorboard_writes_per_epoch_and_nothing_per_batch(tmp_path, quiet):
    import tensorflow as tf

    from tftoolkit.training.callbacks import EpochTensorBoard

    result = tftoolkit.train("mlp", {**quiet, "train.epochs": 2,
                                     "data.validation_fraction": 0.25})
    for split in ("train", "validation"):
        steps = [event.step for path in (result.run_dir / "logs" / split).glob("events.*")
                 for event in tf.compat.v1.train.summary_iterator(str(path))
                 for value in event.summary.value if value.tag == "epoch_loss"]
        assert sorted(steps) == [0, 1], (split, steps)

    x, y = np.zeros((40, 2), "float32"), np.zeros((40, 1), "float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    calls = {}
    for name, callback in (("epoch", EpochTensorBoard(str(tmp_path / "a"))),
                           ("stock", keras.callbacks.TensorBoard(str(tmp_path / "b")))):
        callback._summary_module = _CountingSummary()
        model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[callback])
        calls[name] = callback.summary.scalars
    # 20 steps x 2 epochs: the stock callback builds a scalar per step, ours per epoch
    assert calls["stock"] >= 40 and calls["epoch"] <= 2 * 2, calls


MULTI_WORKER_RECIPE = '''
from tftoolkit.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, TrainConfig
RECIPE = Recipe(
    name="two_workers",
    data=DataConfig(source="synthetic", name="sine_product", num_examples=1024,
                    validation_fraction=0.25),
    model=ModelConfig(architecture="mlp", hidden=[16], activation="tanh"),
    train=TrainConfig(optimizer="adamw", weight_decay=0.01, learning_rate=0.02,
                      schedule="cosine", warmup_epochs=0.5, clip_norm=1.0, ema=0.9,
                      select_best="val_loss", batch_size=64, epochs=3, loss="mse",
                      verbose=0),
    export=ExportConfig(enabled=False))
'''

WORKER = """
import json, sys
import tftoolkit
result = tftoolkit.train(sys.argv[1], {"train.run_dir": sys.argv[2]})
json.dump({"notes": result.notes, "loss": result.history["loss"],
           "val_loss": result.history["val_loss"],
           "val_ema_loss": result.history["val_ema_loss"],
           "weights": [w.tolist() for w in result.model.get_weights()]}, open(sys.argv[3], "w"))
"""


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_train_like_one_process(tmp_path):
    import os

    recipe = tmp_path / "two_workers.py"
    recipe.write_text(MULTI_WORKER_RECIPE)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(recipe), str(tmp_path / "runs"),
             str(tmp_path / f"worker{index}.json")], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    chief, other = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert "strategy: MultiWorkerMirroredStrategy, 2 workers" in chief["notes"]
    for a, b in zip(chief["weights"], other["weights"]):
        np.testing.assert_array_equal(a, b)
    # only the chief wrote a run directory, with its TensorBoard logs
    (run_dir,) = list((tmp_path / "runs" / "two_workers").iterdir())
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))

    single = subprocess.run([sys.executable, "-c", WORKER, str(recipe),
                             str(tmp_path / "single"), str(tmp_path / "single.json")],
                            capture_output=True, text=True, env={
                                k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads((tmp_path / "single.json").read_text())
    # Same global batch of 64, same data order, same schedule, weight decay, clipping and
    # weight average: the curves agree to float32 rounding.
    np.testing.assert_allclose(chief["loss"], alone["loss"], rtol=1e-3)
    np.testing.assert_allclose(chief["val_loss"], alone["val_loss"], rtol=1e-3)
    np.testing.assert_allclose(chief["val_ema_loss"], alone["val_ema_loss"], rtol=1e-3)
    assert [n for n in chief["notes"] if "kept epoch" in n] == [
        n for n in alone["notes"] if "kept epoch" in n]
    for a, b in zip(chief["weights"], alone["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def _start_workers(recipe, run_dir, out_dir, ports):
    import os

    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(recipe), str(run_dir),
             str(out_dir / f"worker{index}.json")], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    return procs


def test_killed_two_worker_run_resumes_on_both_and_matches_an_uninterrupted_one(tmp_path):
    import time

    recipe = tmp_path / "two_workers.py"
    recipe.write_text(MULTI_WORKER_RECIPE.replace("num_examples=1024", "num_examples=4096")
                      .replace("epochs=3", "epochs=4, deterministic=True"))
    (tmp_path / "whole").mkdir()
    for proc in _start_workers(recipe, tmp_path / "whole_runs", tmp_path / "whole",
                               _free_ports(2)):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]

    (tmp_path / "killed").mkdir()
    procs = _start_workers(recipe, tmp_path / "runs", tmp_path / "killed", _free_ports(2))
    deadline = time.time() + 240
    progress = None
    while time.time() < deadline:
        markers = list((tmp_path / "runs").rglob("progress.json"))
        if markers and json.loads(markers[0].read_text())["next_epoch"] >= 2:
            progress = markers[0]
            break
        time.sleep(0.05)
    assert progress is not None, "the run never reached epoch 2"
    procs[1].kill()  # the non-chief dies; the chief's collectives can no longer finish,
    procs[0].kill()  # so the job is restarted as a whole, as a scheduler would
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == -9, "the run finished before it was killed"

    (tmp_path / "resumed").mkdir()
    for proc in _start_workers(recipe, tmp_path / "runs", tmp_path / "resumed",
                               _free_ports(2)):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    whole = json.loads((tmp_path / "whole" / "worker0.json").read_text())
    chief, other = (json.loads((tmp_path / "resumed" / f"worker{i}.json").read_text())
                    for i in range(2))
    assert any("resuming" in note for note in chief["notes"])
    assert any("resuming" in note for note in other["notes"])  # from the chief's directory
    for a, b, c in zip(whole["weights"], chief["weights"], other["weights"]):
        np.testing.assert_array_equal(b, c)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_run_without_determinism_turns_off_what_an_earlier_run_turned_on():
    from tensorflow.python.framework import config

    from tftoolkit.training.runtime import seed_everything

    seed_everything(1, deterministic=True)
    assert config.is_op_determinism_enabled()
    seed_everything(1, deterministic=False)  # e.g. a private run next in a notebook
    assert not config.is_op_determinism_enabled()
    assert "TF_DETERMINISTIC_OPS" not in os.environ


QUIET_RUN = """
import sys
from pathlib import Path
from pathlib import Path

import keras
import numpy as np

import tftoolkit
from conftest import make_image_folder

root = Path(sys.argv[1])
folder = make_image_folder(root / "shapes", per_class=8, size=16)  # scanned in threads
tftoolkit.train("image_folder", {
    "data.dir": str(folder), "data.image_size": 16, "model.architecture": "cnn",
    "model.mode": "scratch", "model.filters": [4], "augment.enabled": False,
    "train.epochs": 1, "train.batch_size": 4, "train.tta": 2, "train.verbose": 0,
    "train.run_dir": str(root / "runs"), "export.dir": str(root / "exports"),
    "export.formats": ["tflite_int8", "mediapipe", "onnx"]})
for seed in range(3):  # several models, each predicting a batch and a smaller last one
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).predict(np.zeros((5, 4)), batch_size=4,
                                                                verbose=0)
"""


def test_an_ordinary_run_logs_no_retracing_and_no_warning(tmp_path):
    """TensorFlow warns of retracing at most twice per function in a process, so the run
    is a process of its own: the folder scan traced its decoder once per thread, and the
    traces of several models' Keras functions were counted together. The export's
    formats printed a LiteRT deprecation warning, NumPy's FutureWarning from Keras' ONNX
    exporter and, at exit, an ignored exception of MediaPipe's metadata writer."""
    proc = subprocess.run([sys.executable, "-c", QUIET_RUN, str(tmp_path)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in ("retracing", "Warning", "Exception ignored"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
