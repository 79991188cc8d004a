"""Recipe loading, overrides and validation: errors name the key, value and choices."""

from __future__ import annotations

import json

import pytest

from tftoolkit.errors import RecipeError
from tftoolkit.recipe import (BUNDLED_RECIPES_DIR, Recipe, bundled_recipes, load_recipe,
                              parse_overrides)


def test_bundled_recipes_load_by_name_and_by_path():
    names = bundled_recipes()
    assert {"linear_regression", "mlp", "fashion_transfer"} <= set(names)
    by_name = load_recipe("mlp")
    by_path = load_recipe(str(BUNDLED_RECIPES_DIR / "mlp.py"))
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.model.hidden == [4]


def test_recipe_from_a_file_outside_the_package(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from tftoolkit.recipe import Recipe, TrainConfig\n"
                    "RECIPE = Recipe(name='mine', train=TrainConfig(epochs=7))\n")
    assert load_recipe(str(path)).train.epochs == 7


def test_parse_overrides_types():
    parsed = parse_overrides(["train.epochs=3", "train.learning_rate=0.1",
                              "model.mode=fine_tune", "model.hidden=[8, 4]",
                              "augment.enabled=true", "model.unfreeze=block_13"])
    assert parsed == {"train.epochs": 3, "train.learning_rate": 0.1,
                      "model.mode": "fine_tune", "model.hidden": [8, 4],
                      "augment.enabled": True, "model.unfreeze": "block_13"}


def test_every_recipe_accepts_the_common_overrides():
    common = ["train.epochs=2", "train.batch_size=16", "train.learning_rate=0.01",
              "train.seed=3", "data.max_examples=10", "export.dir=/tmp/x"]
    for name in bundled_recipes():
        recipe = load_recipe(name, common)
        assert (recipe.train.epochs, recipe.train.batch_size, recipe.train.seed) == (2, 16, 3)
        assert recipe.train.learning_rate == 0.01 and recipe.data.max_examples == 10
        assert recipe.export.dir == "/tmp/x"


def test_int_override_is_accepted_for_a_float_field():
    assert load_recipe("mlp", ["train.learning_rate=1"]).train.learning_rate == 1.0


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(RecipeError, match=r"train\.epochz.*did you mean 'train\.epochs'"):
        load_recipe("mlp", ["train.epochz=3"])


def test_unknown_section_is_named():
    with pytest.raises(RecipeError, match=r"unknown recipe section 'trian'.*'train'"):
        load_recipe("mlp", ["trian.epochs=3"])


def test_wrong_type_is_named():
    with pytest.raises(RecipeError, match=r"train\.epochs='three': expected int"):
        load_recipe("mlp", ["train.epochs=three"])


def test_out_of_range_value_is_named_with_bounds():
    with pytest.raises(RecipeError, match=r"train\.epochs=0 is out of range: allowed \[1, inf\]"):
        load_recipe("mlp", ["train.epochs=0"])


def test_invalid_choice_lists_choices():
    with pytest.raises(RecipeError, match=r"model\.mode='finetune'.*'fine_tune'.*choices: "):
        load_recipe("mlp", ["model.mode=finetune"])


def test_unknown_architecture_suggests():
    with pytest.raises(RecipeError, match=r"'mobilenetv2'.*did you mean 'mobilenet_v2'"):
        load_recipe("mlp", ["model.architecture=mobilenetv2"])


def test_transfer_mode_on_a_scratch_architecture_is_refused():
    with pytest.raises(RecipeError, match="model.mode='fine_tune' needs a pretrained"):
        load_recipe("mlp", ["model.mode=fine_tune"])


def test_unknown_recipe_name_suggests():
    with pytest.raises(RecipeError, match=r"unknown recipe 'mpl'.*did you mean 'mlp'"):
        load_recipe("mpl")


def test_malformed_override():
    with pytest.raises(RecipeError, match="section.key=value"):
        parse_overrides(["train.epochs"])


def test_recipe_object_with_bad_field_value_is_refused():
    from dataclasses import replace

    from tftoolkit.recipe import TrainConfig

    bad = Recipe(name="bad", train=replace(TrainConfig(), optimizer="adagrad"))
    with pytest.raises(RecipeError, match=r"train\.optimizer='adagrad'.*choices: gd, sgd, adam"):
        load_recipe(bad)


def test_cli_rejects_a_typo_before_training(tmp_path, cli):
    proc = cli("train", "mlp", "--set", "train.epochz=3", "--set",
               f"train.run_dir={tmp_path}/runs")
    assert proc.returncode == 2
    assert "train.epochz" in proc.stderr and "train.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_help_documents_every_verb(cli):
    proc = cli("--help")
    assert proc.returncode == 0
    for verb in ("recipes", "show", "train", "compare", "export", "predict", "weights"):
        assert verb in proc.stdout


def test_a_whitespace_delimiter_on_the_command_line_is_kept_as_given(cli):
    # `--set data.label_delimiter=' '` reaches the program as "data.label_delimiter= "
    assert parse_overrides(["data.label_delimiter= ", "data.path_column=\t"]) == {
        "data.label_delimiter": " ", "data.path_column": "\t"}
    shown = cli("show", "image_folder", "--set", "data.label_delimiter= ")
    assert json.loads(shown.stdout)["data"]["label_delimiter"] == " "
    assert parse_overrides(["data.dir="]) == {"data.dir": ""}


def test_cli_recipes_and_show(cli):
    listing = cli("recipes").stdout
    assert "linear_regression" in listing and "full-batch gradient descent" in listing
    shown = cli("show", "mlp", "--set", "train.epochs=9")
    assert '"epochs": 9' in shown.stdout and '"activation": "tanh"' in shown.stdout


# Values a key documents beyond its type: Literal choices and booleans are read from the
# type itself; these are the documented words of free-form keys.
DOCUMENTED_WORDS = {"model.weights": ["imagenet", "imagenet-torchvision", "none"],
                    "train.learning_rate": ["auto"],
                    "train.select_best": ["val_accuracy", "val_loss"],
                    "model.unfreeze": ["block_13"]}
# What another key must say for a value to be accepted at all.
NEEDS = {("privacy.enabled", "true"): ["privacy.noise_multiplier=1.0"],
         ("train.optimizer", "gd"): ["train.batch_size=0"]}
REFUSED_WITH_A_REASON = {("export.formats", "onnx")}


def _documented_values():
    import dataclasses
    import typing

    from tftoolkit.recipe import SECTIONS, section_types

    for section, cls in SECTIONS.items():
        hints = section_types(cls)
        for fld in dataclasses.fields(cls):
            if not fld.metadata.get("cli", True):
                continue
            key, hint = f"{section}.{fld.name}", hints[fld.name]
            if typing.get_origin(hint) is list:
                hint = typing.get_args(hint)[0]
            if typing.get_origin(hint) is typing.Literal:
                values = [str(v) for v in typing.get_args(hint)]
            elif hint is bool:
                values = ["true", "false"]
            else:
                values = DOCUMENTED_WORDS.get(key, [])
            for value in values:
                yield key, value


def test_every_documented_value_of_every_key_is_accepted_through_set():
    from tftoolkit.cli import main

    checked = 0
    for key, value in _documented_values():
        if (key, value) in REFUSED_WITH_A_REASON:
            continue
        overrides = ["regularize.label_smoothing=0", *NEEDS.get((key, value), []),
                     f"{key}={value}"]
        recipe = load_recipe("fashion_transfer", overrides)
        section, _, name = key.partition(".")
        got = getattr(getattr(recipe, section), name)
        expected = {"true": True, "false": False}.get(value, value)
        assert got == expected or got == [expected] or str(got) == value, (key, value, got)
        checked += 1
    assert checked > 60
    args = ["show", "fashion_transfer"] + [f"--set={k}=none" for k in
                                            ("model.weights", "augment.flip",
                                             "regularize.kernel", "data.class_weight")]
    assert main(args) == 0


def test_none_and_null_mean_the_string_none_for_keys_that_document_it():
    for spelling in ("none", "null", "None"):
        recipe = load_recipe("fashion_transfer", [f"model.weights={spelling}",
                                                  f"augment.flip={spelling}"])
        assert (recipe.model.weights, recipe.augment.flip) == ("none", "none")
    with pytest.raises(RecipeError, match=r"train\.epochs=None: expected int"):
        load_recipe("mlp", ["train.epochs=none"])


def _one_line_error(capsys, argv) -> str:
    """The CLI's stderr for ``argv``, checked to be one error line and no traceback."""
    from tftoolkit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_recipe_file_with_a_syntax_error_is_one_line_naming_file_and_line(tmp_path,
                                                                            capsys):
    path = tmp_path / "broken.py"
    path.write_text("from tftoolkit.recipe import Recipe\n"
                    "RECIPE = Recipe(name='broken'\n"
                    "x = [\n")
    err = _one_line_error(capsys, ["show", str(path)])
    assert f"recipe file {path}, line " in err and "fix the Python syntax" in err
    crashing = tmp_path / "crashing.py"
    crashing.write_text("from tftoolkit.recipe import Recipe\n\nRECIPE = Recipe(nme='x')\n")
    err = _one_line_error(capsys, ["show", str(crashing)])
    assert f"{crashing} fails to run at line 3: TypeError" in err and "nme" in err
    from tftoolkit.cli import main

    with pytest.raises(RecipeError):  # --debug: the traceback, not the line
        main(["--debug", "show", str(path)])


@pytest.mark.parametrize("weights", ["none", "imagenet"])  # imagenet: the default
def test_an_image_size_too_small_for_the_backbone_is_one_line_with_the_fix(tmp_path,
                                                                         capsys, weights):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=3)
    err = _one_line_error(capsys, ["train", "image_folder", "--set", f"data.dir={folder}",
                                   "--set", "data.image_size=8", "--set",
                                   "model.architecture=mobilenet_v2", "--set",
                                   f"model.weights={weights}", "--set",
                                   f"train.run_dir={tmp_path / 'runs'}"])
    assert ("data.image_size=8 is too small for model.architecture='mobilenet_v2', which "
            "takes images of at least 32x32 pixels: --set data.image_size=32 or more") in err


def test_an_unexpected_error_is_one_line_unless_debug(capsys, monkeypatch):
    from tftoolkit import cli

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_cmd_recipes", broken)
    assert cli.main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "recipes"])
