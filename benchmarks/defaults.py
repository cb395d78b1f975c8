"""The default recipes on full MNIST: ``digitlab train --model mlp`` and ``--model softmax``
with no other option (issue 12: mlp >= 98.0% test in <= 5 epochs, softmax >= 92%).

    DIGITLAB_DATA=/path/to/data python benchmarks/defaults.py [--out runs-defaults]

Writes ``benchmarks/defaults.json`` (test accuracy, epochs, seconds, the run's settings). Not
part of the unit tests: the MLP run takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitlab.cli import main
from digitlab.data import load

TARGETS = {"mlp": 0.98, "softmax": 0.92}


def run(out: Path) -> dict[str, dict]:
    if load("mnist").is_sample:
        sys.exit("full MNIST not found: set DIGITLAB_DATA to a folder holding mnist/")
    results = {}
    for model, target in TARGETS.items():
        if main(["train", "--model", model, "--out", str(out), "--quiet"]) != 0:
            sys.exit(f"digitlab train --model {model} failed")
        folder = max((out / model).iterdir())
        metrics = json.loads((folder / "metrics.json").read_text())
        results[model] = {
            "command": f"digitlab train --model {model}",
            "test_acc": metrics["test_acc"],
            "target": target,
            "epochs": metrics["epochs"],
            "seconds": metrics["seconds"],
        }
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs-defaults", type=Path)
    results = run(parser.parse_args().out)
    path = Path(__file__).with_name("defaults.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    for r in results.values():
        print(f"{r['command']}: test {r['test_acc']:.4f} (target {r['target']}) in "
              f"{r['epochs']:g} epochs, {r['seconds']:.0f} s")  # fmt: skip
