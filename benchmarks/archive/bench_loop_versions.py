"""Time per training epoch of two adlearn checkouts, side by side in one run (before / after a change).

    .venv/bin/python benchmarks/bench_loop_versions.py --before /path/to/old/checkout [--after .]
        [--models stfpm,fastflow,reverse_distillation] [--epochs 2] [--rounds 2] [--json out.json]

Each (model, checkout) run is a fresh subprocess importing ``adlearn`` from that checkout
(``PYTHONPATH``) and training with `bench_trained_models.run_adlearn` — the same data (real bottle,
256 px, batches of 32), threads, seed and configuration on both sides. Runs alternate
before/after/after/before (ABBA) so that a slow drift of the machine's load hits both equally. The
figure is the median process-CPU seconds of the epochs after the first (warm-up), over all rounds;
the load average before and after is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common, bench_trained_models
from _common import BENCH_DIR, REPO_ROOT, mvtec_category, mvtec_root, write_json  # noqa: E402

CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
import adlearn
from bench_trained_models import run_adlearn
result = run_adlearn({model!r}, {root!r}, {category!r}, {epochs}, {threads}, 0)
result["adlearn_file"] = adlearn.__file__
print("RESULT " + json.dumps(result))
"""


def run_one(checkout: Path, model: str, root: str, category: str, epochs: int, threads: int) -> dict:
    code = CHILD.format(bench=str(BENCH_DIR), model=model, root=root, category=category, epochs=epochs, threads=threads)
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(threads))
    # cwd = the checkout: ``python -c`` puts the working directory first on sys.path
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, cwd=checkout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{model} in {checkout} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    if not result["adlearn_file"].startswith(str(checkout)):
        raise RuntimeError(f"imported {result['adlearn_file']}, not the checkout {checkout}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", default=REPO_ROOT, type=Path)
    parser.add_argument("--models", default="stfpm,fastflow,reverse_distillation")
    parser.add_argument("--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each side runs 2 x rounds / 2 times")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    args.root = str(mvtec_root(args.root))
    mvtec_category(args.root, args.category)
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    order = (["before", "after", "after", "before"] * args.rounds)[: 2 * args.rounds]
    report = {"load_before": os.getloadavg(), "sides": {k: str(v) for k, v in sides.items()}, "models": {}}
    for model in args.models.split(","):
        cpu = {"before": [], "after": []}
        wall = {"before": [], "after": []}
        for side in order:
            result = run_one(sides[side], model, args.root, args.category, args.epochs, args.threads)
            later = result["epochs"][1:] or result["epochs"]
            cpu[side] += [epoch["cpu_s"] for epoch in later]
            wall[side] += [epoch["s"] for epoch in later]
            print(f"{model} {side}: epoch CPU s {[round(e['cpu_s'], 1) for e in result['epochs']]}", flush=True)
        row = {
            side: {
                "epoch_cpu_s": statistics.median(cpu[side]),
                "epoch_s": statistics.median(wall[side]),
                "n_epochs": len(cpu[side]),
            }
            for side in cpu
        }
        row["ratio_cpu"] = row["after"]["epoch_cpu_s"] / row["before"]["epoch_cpu_s"]
        report["models"][model] = row
        print(
            f"{model}: CPU s per epoch before {row['before']['epoch_cpu_s']:.1f}, after "
            f"{row['after']['epoch_cpu_s']:.1f} (after/before {row['ratio_cpu']:.3f})",
            flush=True,
        )
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
