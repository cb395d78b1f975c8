"""Cost of the per-layer statistics (``layer_stats``, on by default) on the default MLP epoch.

Trains the default recipe (784-400-10 ReLU, batches of 64, momentum 0.9) for one epoch on full
MNIST with and without the statistics, ``--rounds`` times alternately, and prints the fastest
epoch of each, their ratio and the time spent inside ``LayerStats.measure``. Run:
``DIGITLAB_DATA=../shared/data python benchmarks/layerstats.py``; writes
``benchmarks/layerstats.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from threadpoolctl import threadpool_info

from digitlab.runner import build_run_model, build_trainer, prepare_data
from digitlab.settings import Settings
from digitlab.train.layerstats import LayerStats


def epoch_seconds(settings: Settings, data) -> tuple[float, float]:
    """Seconds of one epoch and seconds spent inside the statistics."""
    model = build_run_model(settings, data.train[0].shape[1], len(data.classes))
    trainer = build_trainer(settings, model, data, [])
    spent = [0.0]
    for cb in trainer.callbacks:
        if isinstance(cb, LayerStats):
            inner = cb.measure

            def timed(t, step, inner=inner):
                t0 = time.perf_counter()
                out = inner(t, step)
                spent[0] += time.perf_counter() - t0
                return out

            cb.measure = timed
    t0 = time.perf_counter()
    trainer.fit(data.train, data.val, epochs=1)
    return time.perf_counter() - t0, spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    on = Settings.from_dict({"model": "mlp", "epochs": 1})
    off = on.replace(layer_stats=False)
    data = prepare_data(on)
    times: dict[str, list[float]] = {"on": [], "off": [], "inside": []}
    for _ in range(args.rounds):
        t_on, inside = epoch_seconds(on, data)
        t_off, _ = epoch_seconds(off, data)
        times["on"].append(t_on)
        times["off"].append(t_off)
        times["inside"].append(inside)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "epoch_without_s": best["off"],
        "epoch_with_s": best["on"],
        "ratio": best["on"] / best["off"],
        "inside_measure_s": best["inside"],
        "inside_share": best["inside"] / best["off"],
        "rounds": times,
        "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "architecture")}
                 for i in threadpool_info()],  # fmt: skip
    }
    print(f"default MLP epoch: {best['off']:.2f} s without statistics, {best['on']:.2f} s "
          f"with ({result['ratio']:.3f}x); inside the statistics {best['inside'] * 1e3:.1f} ms "
          f"({100 * result['inside_share']:.2f}% of the epoch)")  # fmt: skip
    out = Path(__file__).with_name("layerstats.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
