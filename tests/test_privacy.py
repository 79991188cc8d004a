"""DP-SGD: per-example clipping, calibrated noise, and the accountant's epsilon."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftoolkit
from tftoolkit.errors import RecipeError
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, PrivacyConfig, Recipe,
                              TrainConfig)
from tftoolkit.tasks import SingleLabel
from tftoolkit.training import privacy, runner
from tftoolkit.training.checkpoint import callback_states
from tftoolkit.training.step import TrainStep, per_example_loss


def _compiled(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy())
    return model


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 3)) * 3).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, n)]
    return tf.constant(x), tf.constant(y)


def _loop_gradients(model, x, y):
    """Each example's gradient, one tape per example."""
    loss = keras.losses.CategoricalCrossentropy()
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = loss(y[i:i + 1], model(x[i:i + 1], training=True))
        out.append(tape.gradient(value, model.trainable_variables))
    return out


def test_each_clipped_gradient_is_within_the_bound_and_matches_a_loop():
    model, (x, y) = _compiled(), _batch()
    private = privacy.PrivateGradients(l2_clip=0.5, noise_multiplier=0.0, expected_batch=6)
    _, _, vectorised = private.per_example_gradients(model, per_example_loss(model), x, y)
    looped = _loop_gradients(model, x, y)
    for i, per_example in enumerate(looped):
        for v, g in zip(vectorised, per_example):
            np.testing.assert_allclose(v[i], g, rtol=1e-5, atol=1e-6)
    norms = [np.sqrt(sum(float(np.sum(g ** 2)) for g in grads)) for grads in looped]
    assert max(norms) > 0.5  # the bound is active for some examples
    clipped = [[g * min(1.0, 0.5 / n) for g in grads] for grads, n in zip(looped, norms)]
    assert all(np.sqrt(sum(float(np.sum(g ** 2)) for g in grads)) <= 0.5 + 1e-6
               for grads in clipped)
    for total, *parts in zip(private.clipped_sum(vectorised), *clipped):
        np.testing.assert_allclose(total, np.sum(parts, axis=0), rtol=1e-5, atol=1e-6)


def test_without_noise_and_with_a_huge_clip_dp_sgd_is_plain_sgd():
    x, y = _batch(8, seed=1)
    private, plain = _compiled(3), _compiled(3)
    step = TrainStep(private, privacy.PrivateGradients(l2_clip=1e6, noise_multiplier=0.0,
                                                       expected_batch=8))
    tf.function(step)(x, y, tf.ones([8]))
    with tf.GradientTape() as tape:
        loss = plain.loss(y, plain(x, training=True))
    plain.optimizer.apply_gradients(zip(tape.gradient(loss, plain.trainable_variables),
                                        plain.trainable_variables))
    for a, b in zip(private.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_the_noise_has_the_calibrated_standard_deviation():
    private = privacy.PrivateGradients(l2_clip=0.7, noise_multiplier=1.3, expected_batch=50)
    (noised,) = private.noised_average([tf.zeros([200_000])])
    assert float(np.std(noised)) == pytest.approx(1.3 * 0.7 / 50, rel=0.02)
    assert abs(float(np.mean(noised))) < 1e-4


def _private_recipe(**privacy_options) -> Recipe:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype("float32")
    y = (x[:, 0] - x[:, 2] > 0).astype("int64")
    return Recipe(name="private", data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                  model=ModelConfig(architecture="mlp", hidden=[8]),
                  train=TrainConfig(epochs=4, batch_size=40, optimizer="sgd",
                                    learning_rate=0.5, verbose=0),
                  export=ExportConfig(enabled=False),
                  privacy=PrivacyConfig(enabled=True, **privacy_options))


def test_the_reported_epsilon_is_dp_accountings(quiet):
    result = tftoolkit.train(_private_recipe(noise_multiplier=1.1, delta=1e-4), quiet)
    n = result.info.counts["train"]
    steps = 4 * round(n / 40)
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        40 / n, dp_accounting.GaussianDpEvent(1.1)), steps))
    assert result.metrics["epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-9)
    assert result.metrics["delta"] == 1e-4
    assert len(result.history["epsilon"]) == 4
    assert result.history["epsilon"] == sorted(result.history["epsilon"])  # it only grows
    assert result.metrics["val_accuracy"] > 0.7  # still learns


def test_a_target_epsilon_is_never_exceeded(quiet):
    planned = tftoolkit.train(_private_recipe(target_epsilon=2.0), quiet)
    assert planned.metrics["epsilon"] <= 2.0
    assert planned.metrics["epsilon"] > 1.9  # the noise was found for the planned epochs
    # Too little noise for the target: after epoch 1 epsilon is 1.97, epoch 2 would take
    # it to 2.54, so training stops after one epoch.
    stopped = tftoolkit.train(_private_recipe(target_epsilon=2.5, noise_multiplier=1.2),
                              quiet)
    assert stopped.metrics["epsilon"] <= 2.5
    assert len(stopped.history["loss"]) == 1


def test_a_private_stage_schedules_its_learning_rate_over_the_steps_it_takes(quiet):
    # 288 training examples in batches of 70: 4 expected Poisson batches an epoch (a
    # pass over the data would be 5)
    recipe = _private_recipe(noise_multiplier=1.0).with_overrides({
        "train.batch_size": 70, "train.schedule": "cosine", "train.warmup_epochs": 0.0})
    result = tftoolkit.train(recipe, quiet)
    assert result.info.counts["train"] == 288
    optimizer = result.model.optimizer
    assert int(optimizer.iterations) == 4 * 4
    assert optimizer._learning_rate.decay_steps == 4 * 4  # the cosine ends at the last step
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("overrides,message", [
    ({"model.architecture": "cnn", "model.mode": "scratch"}, "BatchNorm"),
    ({"augment.enabled": True, "augment.mixup": 0.2}, "mixup"),
    ({"augment.enabled": True}, "augment.enabled=true: per-example gradients are "
                                "vectorised.*augment.enabled=false"),
    ({"augment.enabled": True, "augment.placement": "pipeline"}, "augment.enabled=true"),
    ({"regularize.dropout": 0.2}, "regularize.dropout=0.2: .*draw once per batch.*"
                                  "regularize.dropout=0"),
    ({"data.class_weight": "balanced"}, "class_weight"),
    ({"train.steps_per_epoch": 5}, "train.steps_per_epoch=5.*train.steps_per_epoch=0"),
    ({"train.min_steps": 100}, "train.min_steps=100.*train.min_steps=0"),
    ({"model.mode": "auto"}, "model.mode=auto: every mode tried would train on the private"),
    ({"privacy.target_epsilon": 0.0, "privacy.noise_multiplier": 0.0}, "noise_multiplier"),
    ({"train.learning_rate": "auto"}, "train.learning_rate=auto"),
    ({"export.formats": ["tflite_int8"]}, "tflite_int8.*privacy.public_split=val"),
    ({"export.formats": ["mediapipe_int8"]}, "mediapipe_int8.*privacy.public_split=val"),
    ({"train.deterministic": True}, "train.deterministic.*insecure_reproducible"),
    ({"train.precision": "mixed_float16"}, "mixed_float16.*skips a step when any example's "
                                           "gradient overflows.*mixed_bfloat16"),
])
def test_what_dp_sgd_cannot_bound_is_refused(overrides, message):
    with pytest.raises(RecipeError, match=message):
        tftoolkit.load_recipe("fashion_transfer", {"privacy.enabled": True,
                                                   "privacy.target_epsilon": 8.0,
                                                   **overrides})


MIRRORED_DP = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import tftoolkit
from tftoolkit.training import privacy
from tftoolkit.training.step import TrainStep, use_in_fit

def compiled():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy())
    return model

rng = np.random.default_rng(1)
x = (rng.normal(size=(9, 3)) * 3).astype("float32")  # 5 and 4 examples per replica
y = np.eye(2, dtype="float32")[rng.integers(0, 2, 9)]
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with mirrored.scope():
    spread = compiled()
alone = compiled()
# one padded Poisson batch through fit: 10 rows, the last one padding
batch = (np.concatenate([x, x[:1]]), np.concatenate([y, y[:1]]),
         np.array([1.0] * 9 + [0.0], np.float32))
for model, strategy in ((spread, mirrored), (alone, None)):
    use_in_fit(model, TrainStep(model, privacy.PrivateGradients(
        l2_clip=0.5, noise_multiplier=0.0, expected_batch=9, strategy=strategy)))
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
same = max(float(np.abs(a - b).max()) for a, b in zip(spread.get_weights(),
                                                       alone.get_weights()))
noisy = privacy.PrivateGradients(l2_clip=0.7, noise_multiplier=1.3, expected_batch=50,
                                 strategy=mirrored)
draws = mirrored.run(lambda: noisy.noised_average([tf.zeros([100_000])])[0])
a, b = (np.asarray(v) for v in mirrored.experimental_local_results(draws))
print(json.dumps({"same": same, "std": [float(a.std()), float(b.std())],
                  "corr": float(np.corrcoef(a, b)[0, 1])}))
"""

# A process of its own: two MirroredStrategy objects in one process share collective keys.
MIRRORED_DP_RUN = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tftoolkit
result = tftoolkit.train(tftoolkit.load_recipe(sys.argv[1], json.loads(sys.argv[2])))
print(json.dumps({"notes": result.notes, "epsilon": result.metrics["epsilon"],
                  "val_accuracy": result.metrics["val_accuracy"]}))
"""

PRIVATE_RECIPE_FILE = """
import numpy as np
from tftoolkit.recipe import (DataConfig, ExportConfig, ModelConfig, PrivacyConfig, Recipe,
                              TrainConfig)
rng = np.random.default_rng(0)
x = rng.normal(size=(400, 4)).astype("float32")
y = (x[:, 0] - x[:, 2] > 0).astype("int64")
RECIPE = Recipe(name="private", data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                model=ModelConfig(architecture="mlp", hidden=[8]),
                train=TrainConfig(epochs=4, batch_size=40, optimizer="sgd",
                                  learning_rate=0.5, verbose=0),
                export=ExportConfig(enabled=False),
                privacy=PrivacyConfig(enabled=True, noise_multiplier=1.1, delta=1e-4))
"""


def test_dp_sgd_under_mirrored_strategy_matches_one_device(tmp_path, quiet):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MIRRORED_DP], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] < 1e-6  # clipped sums over two replicas = over one device
    for std in out["std"]:  # each replica: 1/sqrt(2) of the noise
        assert std == pytest.approx(1.3 * 0.7 / 50 / 2 ** 0.5, rel=0.02)
    assert abs(out["corr"]) < 0.02  # independent streams: the sum has the full deviation

    recipe = tmp_path / "private.py"
    recipe.write_text(PRIVATE_RECIPE_FILE)
    options = {"train.distribute": "mirrored", "train.run_dir": str(tmp_path / "mirrored")}
    proc = subprocess.run([sys.executable, "-c", MIRRORED_DP_RUN, str(recipe),
                           json.dumps(options)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "strategy: MirroredStrategy over 2 CPU devices" in out["notes"]
    alone = tftoolkit.train(str(recipe), quiet)
    assert out["epsilon"] == pytest.approx(alone.metrics["epsilon"], rel=1e-12)
    assert out["val_accuracy"] > 0.7


def test_both_stages_of_a_private_two_stage_run_spend_one_budget(image_folder, quiet):
    result = tftoolkit.train("image_folder", {
        **quiet, "data.dir": str(image_folder), "data.image_size": 33,
        "model.architecture": "mobilenet_v2", "model.weights": "none",
        "model.mode": "two_stage", "model.unfreeze": "block_16",
        "augment.enabled": False, "regularize.dropout": 0.0, "train.epochs": 1,
        "train.fine_tune_epochs": 1,
        "train.batch_size": 8, "train.min_steps": 0, "privacy.enabled": True,
        "privacy.noise_multiplier": 1.0,
        "export.enabled": False})
    n = result.info.counts["train"]
    # image_folder's pixel expert is for a frozen head alone: this run says it goes without
    assert any("model.pixel_features=16 not used" in note for note in result.notes)
    # frozen-backbone stage on cached features, then fine-tuning through the backbone
    assert len(result.history["epsilon"]) == 2
    expected = privacy.epsilon(8 / n, 1.0, 2 * round(n / 8), 1 / (10 * n))
    assert result.metrics["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert result.history["epsilon"][0] < result.history["epsilon"][1] == pytest.approx(
        expected, rel=1e-9)


def _cached_prefix_fine_tune(image_folder, quiet, tmp_path, **options):
    """A fine-tuning run of MobileNetV2's top block on the cached activations of the frozen
    layers below it: full-batch, no momentum, so a private run with (almost) no noise and
    a huge clip takes exactly the steps of plain gradient descent."""
    return tftoolkit.train("image_folder", {
        **quiet, "train.run_dir": str(tmp_path / "runs" / str(len(options))),
        "data.dir": str(image_folder), "data.image_size": 33,
        "model.architecture": "mobilenet_v2", "model.weights": "imagenet-torchvision",
        "model.mode": "fine_tune", "model.unfreeze": "block_16", "augment.enabled": False,
        "train.epochs": 8, "train.optimizer": "gd", "train.batch_size": 0,
        "train.momentum": 0.0, "train.fine_tune_learning_rate": 0.002, "train.min_steps": 0,
        "regularize.dropout": 0.0,
        "export.enabled": False, **options})


def test_private_fine_tuning_on_a_cached_prefix_trains_on_its_float_activations(
        image_folder, quiet, tmp_path, imported_mobilenet):
    plain = _cached_prefix_fine_tune(image_folder, quiet, tmp_path)
    private = _cached_prefix_fine_tune(image_folder, quiet, tmp_path, **{
        "privacy.enabled": True, "privacy.noise_multiplier": 1e-12, "privacy.l2_clip": 1e6})
    assert any("frozen-prefix cache" in note for note in private.notes)
    # sampling rate 1 (batch = the whole split): every step is the full-batch gradient
    for a, b in zip(private.model.get_weights(), plain.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert private.metrics["val_accuracy"] >= plain.metrics["val_accuracy"]


def _noise_recipe(quiet, tmp_path, name: str, **options) -> Recipe:
    """A linear classifier on 2 features and 10 that are always 0: the kernel rows of
    these get no gradient from any example, so every change of them is privacy noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype("float32")
    x[:, 2:] = 0.0
    y = (x[:, 0] > 0).astype("int64")
    return Recipe(name="noise", data=DataConfig(source="arrays", arrays={"train": (x, y)}),
                  model=ModelConfig(architecture="linear"),
                  train=TrainConfig(epochs=2, batch_size=20, optimizer="sgd", momentum=0.0,
                                    learning_rate=0.5, verbose=0,
                                    run_dir=str(tmp_path / name)),
                  export=ExportConfig(enabled=False),
                  privacy=PrivacyConfig(enabled=True, noise_multiplier=0.01, l2_clip=1.0,
                                        **options))


class _Trajectory(keras.callbacks.Callback):
    """The kernel (rows: features) at the start of training and after each epoch."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def _keep(self):
        kernel = next(v for v in self.model.trainable_variables if len(v.shape) == 2)
        self.kernels.append(np.array(kernel.value))

    def on_train_begin(self, logs=None):
        self._keep()

    def on_epoch_end(self, epoch, logs=None):
        self._keep()


_RUN_CALLBACKS = runner._callbacks  # as the runner makes them, before any test wraps it


def _watched(monkeypatch, interrupt_after: int | None = None) -> _Trajectory:
    """Record the kernel's trajectory in the next run; optionally stop it like a crash
    after epoch ``interrupt_after`` (once that epoch's state is on disk)."""
    from tftoolkit.training import checkpoint, runner

    trajectory, make = _Trajectory(), _RUN_CALLBACKS

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == interrupt_after:
                saver.on_train_end()  # the epoch's state file and progress written
                raise KeyboardInterrupt

    def callbacks(*args):
        nonlocal saver
        made = make(*args)
        saver = next(c for c in made if isinstance(c, checkpoint.SaveProgress))
        return [trajectory, *made, Crash()]

    saver = None
    monkeypatch.setattr(runner, "_callbacks", callbacks)
    return trajectory


def test_two_private_runs_with_one_seed_draw_different_noise_and_batches(
        quiet, tmp_path, monkeypatch):
    runs = []
    for name in ("first", "second"):
        trajectory = _watched(monkeypatch)
        result = tftoolkit.train(_noise_recipe(quiet, tmp_path, name))
        runs.append((trajectory.kernels, result.model.get_weights()))
    (kernels_a, weights_a), (kernels_b, weights_b) = runs
    np.testing.assert_array_equal(kernels_a[0], kernels_b[0])  # one seed: one start
    noise_a, noise_b = (kernels_a[-1] - kernels_a[0])[2:], (kernels_b[-1] - kernels_b[0])[2:]
    assert np.all(noise_a != 0) and np.all(noise_b != 0)
    assert not np.allclose(noise_a, noise_b, rtol=0.1, atol=0)  # other noise
    # the rows the examples move: other batches move them by far more than the noise can
    # (with the same batches they differ by about the noise; other batches gave 13-30x)
    signal_gap = np.abs((kernels_a[-1] - kernels_b[-1])[:2]).max()
    assert signal_gap > 5 * max(np.abs(noise_a).max(), np.abs(noise_b).max())


def test_a_resumed_private_run_does_not_repeat_its_noise(quiet, tmp_path, monkeypatch):
    recipe = _noise_recipe(quiet, tmp_path, "resumed")
    first = _watched(monkeypatch, interrupt_after=0)
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe)
    resumed = _watched(monkeypatch)
    result = tftoolkit.train(recipe)
    assert any("resuming" in note for note in result.notes)
    np.testing.assert_array_equal(resumed.kernels[0], first.kernels[1])  # from epoch 1
    first_epoch_noise = (first.kernels[1] - first.kernels[0])[2:]
    resumed_epoch_noise = (resumed.kernels[1] - resumed.kernels[0])[2:]
    assert np.all(first_epoch_noise != 0) and np.all(resumed_epoch_noise != 0)
    assert not np.allclose(first_epoch_noise, resumed_epoch_noise, rtol=0.1, atol=0)


def test_a_resumed_private_stage_with_no_affordable_epoch_keeps_its_best_epoch(
        quiet, tmp_path, monkeypatch):
    n, batch = 144, 20  # training examples of _noise_recipe
    spent = [privacy.epsilon(batch / n, 1.0, epochs * round(n / batch), 1e-3)
             for epochs in (2, 3)]
    recipe = _noise_recipe(quiet, tmp_path, "budget", insecure_reproducible=True,
                           delta=1e-3).with_overrides({
        "privacy.noise_multiplier": 1.0, "privacy.target_epsilon": sum(spent) / 2,
        "train.epochs": 4, "train.learning_rate": 4.0, "train.select_best": "val_accuracy"})
    _watched(monkeypatch, interrupt_after=1)  # the budget's last epoch, before the end
    with pytest.raises(KeyboardInterrupt):
        tftoolkit.train(recipe)
    result = tftoolkit.train(recipe)  # resumes at epoch 2, which it cannot afford
    assert result.info.counts["train"] == n
    assert any("resuming" in note for note in result.notes)
    kept = next(note for note in result.notes if "kept epoch" in note)
    assert "kept epoch 1 " in kept  # the best is not the last epoch taken
    last = max(result.run_dir.glob("checkpoints/state-0-*.npz"),
               key=lambda path: int(path.stem.rsplit("-", 1)[1]))
    for weights, kept_weights in zip(result.model.get_weights(),
                                     callback_states(last)["keep_best"].arrays, strict=True):
        np.testing.assert_array_equal(weights, kept_weights)


def test_int8_calibration_of_a_private_run_is_on_its_public_split():
    from tftoolkit import serving
    from tftoolkit.data import load_data

    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, size=(64, 4)).astype("float32")  # private: below 1
    val = rng.uniform(10, 11, size=(32, 4)).astype("float32")  # public: above 10
    labels = (rng.random(64) > 0.5).astype("int64"), (rng.random(32) > 0.5).astype("int64")
    arrays = {"train": (train, labels[0]), "val": (val, labels[1])}

    def calibration(private: bool) -> np.ndarray:
        recipe = Recipe(name="calibrated", data=DataConfig(source="arrays", arrays=arrays),
                        model=ModelConfig(architecture="mlp", hidden=[8]),
                        train=TrainConfig(batch_size=8, optimizer="sgd", learning_rate=0.5),
                        export=ExportConfig(formats=["tflite_int8"], calibration_steps=2),
                        privacy=PrivacyConfig(enabled=private, noise_multiplier=1.0,
                                              public_split="val"))
        return np.concatenate(serving.quantization_inputs(load_data(recipe)).calibration)

    private = calibration(True)
    assert len(private) == 16 and private.min() >= 10  # validation samples only
    assert calibration(False).max() < 1  # without privacy: training samples


def _card(result) -> dict:
    import json

    from tftoolkit.serving.savedmodel import MODEL_CARD

    return json.loads((result.export_dir / MODEL_CARD).read_text())


def test_the_card_of_a_private_run_releases_no_per_class_counts(quiet, tmp_path):
    recipe = _noise_recipe(quiet, tmp_path, "card")
    result = tftoolkit.train(recipe.with_overrides({
        "export.enabled": True, "export.dir": str(tmp_path / "exports"), "train.epochs": 1,
        "train.select_best": "val_accuracy"}))
    card = _card(result)
    assert card["data_info"]["class_counts"] is None
    assert result.info.class_counts is not None  # the run itself knows them
    assert sorted(card["split_fingerprints"]) == ["test", "val"]  # no training one
    assert card["privacy"]["epsilon"] == pytest.approx(result.metrics["epsilon"])
    assert "OS entropy" in card["privacy"]["guarantee"]
    not_private = card["privacy"]["not_private"]
    assert any("training loss" in line for line in not_private)
    assert "the images the export's parity check serves (the val split)" in not_private
    assert any(line.startswith("the epoch and stage kept (train.select_best=val_accuracy)")
               for line in not_private)


def test_the_card_of_a_private_run_names_no_skipped_training_file():
    import json

    from tftoolkit.data import DataInfo
    from tftoolkit.serving import _card as card_of

    info = DataInfo(SingleLabel(2, "sparse"), (8, 8, 3), ["a", "b"], 8, "folder",
                    {"train": 4}, [2, 2], bad_files=[("/private/alice.png", "truncated")])
    recipe = tftoolkit.load_recipe("fashion_transfer", {"privacy.enabled": True,
                                                        "privacy.target_epsilon": 8.0})
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    private = card_of(model, recipe.to_dict(), info, {})
    assert "alice" not in json.dumps(private)


def test_insecure_reproducible_runs_repeat_and_say_the_guarantee_is_void(
        quiet, tmp_path):
    results = [tftoolkit.train(_noise_recipe(quiet, tmp_path, name,
                                             insecure_reproducible=True).with_overrides({
        "export.enabled": name == "second", "export.dir": str(tmp_path / "exports")}))
               for name in ("first", "second")]
    for a, b in zip(*(r.model.get_weights() for r in results)):
        np.testing.assert_array_equal(a, b)
    assert _card(results[1])["privacy"]["guarantee"].startswith("NONE")


def test_a_search_over_privacy_keys_is_refused_before_training(tmp_path):
    from tftoolkit.training.search import search

    with pytest.raises(RecipeError, match=r"--space privacy.enabled: tune on a private"):
        search("fashion_transfer", ["privacy.enabled=true|false"],
               overrides={"privacy.target_epsilon": 8.0,
                          "train.run_dir": str(tmp_path / "runs")})
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("verb", ["tune", "compare", "lr-find"])
def test_a_search_over_a_private_recipe_is_refused_before_training(verb, quiet, tmp_path, cli):
    private = ["--set", "privacy.enabled=true", "--set", "privacy.target_epsilon=8",
               "--set", f"train.run_dir={tmp_path / 'runs'}"]
    extra = {"tune": ["--space", "train.learning_rate=1e-4:1e-2:log"],
             "compare": ["--modes", "feature_extraction"], "lr-find": []}[verb]
    proc = cli(verb, "fashion_transfer", *private, *extra)
    assert proc.returncode == 2
    assert f"{verb} on a private recipe (privacy.enabled=true)" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_what_a_private_run_reads_without_noise_is_decided_in_one_place():
    from tftoolkit.unnoised import unnoised_reads

    recipe = tftoolkit.load_recipe("fashion_transfer", {
        "privacy.enabled": True, "privacy.target_epsilon": 8.0, "train.ema": 0.9,
        "privacy.public_split": "val", "export.formats": ["mediapipe_int8"]})
    reads = unnoised_reads(recipe, {"train", "val", "test"}, thresholded=True)
    assert {use: read.split for use, read in reads.items()} == {
        "training_figures": "train", "split_sizes": "train", "parity": "val",
        "validation_figures": "val", "selection": "val", "ema": "val", "thresholds": "val",
        "calibration": "val", "format_figures": "val", "test_figures": "test"}
    alone = unnoised_reads(recipe.with_overrides({"train.select_best": "", "train.ema": 0.0,
                                                  "export.formats": []}), {"train"})
    # without a validation split nothing is selected or thresholded, and the parity
    # check serves synthetic images rather than private training ones
    assert set(alone) == {"training_figures", "split_sizes", "parity"}
    assert alone["parity"].split == ""


def test_a_private_run_without_validation_checks_its_export_on_synthetic_images(tmp_path):
    from tftoolkit.data import load_data
    from tftoolkit.rundir import RunDir
    from tftoolkit.serving import save_parity_inputs

    recipe_file = tmp_path / "private.py"
    recipe_file.write_text(PRIVATE_RECIPE_FILE)
    recipe = tftoolkit.load_recipe(recipe_file, {"data.validation_fraction": 0.0,
                                                 "data.test_fraction": 0.0})
    data = load_data(recipe)
    save_parity_inputs(RunDir(tmp_path), data)
    parity = np.load(tmp_path / RunDir.PARITY_INPUTS)
    training = data.splits["train"].arrays
    distance = np.abs(parity[:, None, :] - training[None, :, :]).max(axis=-1)
    assert distance.min() > 1e-3  # no parity input is a training example
    non_private = tftoolkit.load_recipe(recipe_file, {"data.validation_fraction": 0.0,
                                                     "data.test_fraction": 0.0,
                                                     "privacy.enabled": False})
    save_parity_inputs(RunDir(tmp_path), load_data(non_private))
    reused = np.load(tmp_path / RunDir.PARITY_INPUTS)
    assert np.abs(reused[:, None, :] - training[None, :, :]).max(axis=-1).min() == 0.0


def test_a_private_training_split_over_the_memory_budget_is_refused_before_it_is_built(
        tmp_path, quiet, monkeypatch):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=12, size=16)
    recipe = Recipe(name="big", data=DataConfig(source="folder", dir=str(folder),
                                                image_size=192, memory_budget_mb=1),
                    model=ModelConfig(architecture="mlp", hidden=[2]),
                    train=TrainConfig(epochs=1, batch_size=8),
                    export=ExportConfig(enabled=False),
                    privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0))
    monkeypatch.setattr(runner.distributed, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(RecipeError) as refused:
        tftoolkit.train(recipe, quiet)
    train = tftoolkit.load_data(recipe).info.counts["train"]
    assert str(refused.value).startswith(
        f"privacy.enabled: DP-SGD samples its batches from the whole training split held in "
        f"memory, and its {train} examples of 192x192x3 uint8 pixels take "
        f"{train * 192 * 192 * 3 / 2 ** 20:.0f} MB, more than the memory budget of 1 MB "
        "(data.memory_budget_mb=1). Fix: set data.memory_budget_mb=")
