"""Runtime: strategies, mixed precision, seeded reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import keras
import tftoolkit


@pytest.fixture
def restore_float32():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_two_seeded_deterministic_runs_give_identical_weights(quiet):
    overrides = {**quiet, "train.deterministic": True, "train.epochs": 5}
    first = tftoolkit.train("mlp", overrides)
    second = tftoolkit.train("mlp", overrides)
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    runtime = json.loads((first.run_dir / "runtime.json").read_text())
    assert runtime["deterministic"] is True and runtime["strategy"] == "_DefaultDistributionStrategy"


def test_mixed_bfloat16_trains_and_exports(image_folder, quiet, restore_float32):
    from tftoolkit.recipe import DataConfig, ModelConfig, Recipe, TrainConfig

    recipe = Recipe(name="bf16", data=DataConfig(source="folder", dir=str(image_folder),
                                                 image_size=32),
                    model=ModelConfig(architecture="cnn", filters=[8]),
                    train=TrainConfig(epochs=1, batch_size=8, precision="mixed_bfloat16"))
    result = tftoolkit.train(recipe, quiet)
    assert result.model.get_layer("conv_0").compute_dtype == "bfloat16"
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    card = json.loads((result.export_dir / "model_card.json").read_text())
    assert card["parity"]["tolerance"] == 1e-2
    assert card["parity"]["max_abs_diff"] <= 1e-2
    assert "mixed precision" in card["parity"]["note"]


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tftoolkit
result = tftoolkit.train("mlp", {"train.distribute": "mirrored", "train.epochs": 3,
                                  "train.run_dir": sys.argv[1], "train.verbose": 0})
print(json.dumps({"notes": result.notes, "loss": result.history["loss"]}))
"""


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "strategy: MirroredStrategy with 2 replica(s)" in out["notes"]
    assert out["loss"][-1] < out["loss"][0]
