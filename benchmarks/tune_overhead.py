"""What a search costs: 4 feature-extraction trials on the flagship (small data) against
one trial's wall time. Trials share the frozen backbone's features, computed once.

Each side runs in a fresh process; the last line is the ratio (target <= 2).

    python -m benchmarks.tune_overhead
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

SMALL = {"model.mode": "feature_extraction", "data.max_examples": 2000,
         "train.epochs": 3, "train.select_best": ""}
ONE_TRIAL = """
import json, sys, time
import tftoolkit
start = time.perf_counter()
tftoolkit.train("fashion_transfer", {**json.loads(sys.argv[1]), "export.enabled": False,
                "train.run_dir": sys.argv[2]}, report_test=False)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
SEARCH = """
import json, sys
from tftoolkit.training.search import search
result = search("fashion_transfer", ["train.learning_rate=1e-4:1e-2:log",
                                     "regularize.dropout=0.0:0.5"], trials=4,
                objective="val_accuracy",
                overrides={**json.loads(sys.argv[1]), "train.run_dir": sys.argv[2]})
print(json.dumps({"seconds": [row.seconds for row in result.trials],
                  "best": result.best_values}))
"""


def _child(code: str, workdir: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(SMALL), workdir],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one = _child(ONE_TRIAL, f"{tmp}/one")["seconds"]
        search = _child(SEARCH, f"{tmp}/search")
    trials = search["seconds"]
    print(f"one trial alone: {one:.1f} s")
    print("search trials: " + ", ".join(f"{s:.1f} s" for s in trials)
          + f" (total {sum(trials):.1f} s; best {search['best']})")
    print(f"4 trials / one trial: {sum(trials) / one:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()
