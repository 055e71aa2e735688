"""C-Flow, CS-Flow, U-Flow: process-CPU seconds per training batch through ``fit`` (adlearn side only).

Runs ``--batches`` training batches of each model's ``cpu`` preset on a real MVTec category (no validation,
no test) and reports the process CPU seconds per image batch after one warm-up batch — the figure that
stays steady on a machine shared with other jobs, where wall-clock time does not. The side-by-side
with anomalib 2.7, step for step on the same batch: ``benchmarks/bench_flows.py``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/archive/time_flow_steps.py --models cflow,csflow,uflow --batches 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common
from _common import clock, mvtec_category, mvtec_root, write_json  # noqa: E402


def time_model(name: str, root: str, category: str, batches: int, threads: int, seed: int, **options) -> dict:
    """``options`` override the preset's (the tests use a small backbone and image size)."""
    import torch

    from adlearn.data import MVTecDataset
    from adlearn.models import create

    torch.set_num_threads(threads)
    model = create(
        name,
        preset="cpu",
        device="cpu",
        seed=seed,
        max_steps=batches + 1,
        val_fraction=0.0,
        val_anomalies="none",
        amp=False,
        **options,
    )
    train = MVTecDataset(root, category, "train", model.transform)
    marks = []

    trainer = model.trainer(verbose=False, progress=False)
    step = trainer.training_step

    def timed_step(batch):
        marks.append(clock())
        loss = step(batch)
        marks.append(clock())
        return loss

    trainer.training_step = timed_step
    trainer.fit(train)
    per_batch = [(marks[i + 1][0] - marks[i][0], marks[i + 1][1] - marks[i][1]) for i in range(0, len(marks), 2)]
    later = per_batch[1:] or per_batch
    return {
        "model": name,
        "preset": model.preset("cpu"),
        "batch_size": model.batch_size,
        "threads": threads,
        "batches": len(per_batch),
        "first_batch_cpu_s": per_batch[0][1],
        "cpu_s_per_batch": sum(c for _, c in later) / len(later),
        "wall_s_per_batch": sum(w for w, _ in later) / len(later),
        "batches_per_epoch": -(-int(len(train) * 0.8) // model.batch_size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cflow,csflow,uflow")
    parser.add_argument("--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--batches", type=int, default=4, help="timed batches after one warm-up batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    args.root = str(mvtec_root(args.root))
    mvtec_category(args.root, args.category)
    rows = [
        time_model(m, args.root, args.category, args.batches, args.threads, args.seed)
        for m in args.models.split(",")
        if m
    ]
    print(
        f"{'model':7s} {'batch':>5s} {'CPU s/batch':>12s} {'wall s/batch':>13s} {'batches/epoch':>14s} "
        f"{'CPU s/epoch (est.)':>19s}"
    )
    for r in rows:
        print(
            f"{r['model']:7s} {r['batch_size']:5d} {r['cpu_s_per_batch']:12.2f} {r['wall_s_per_batch']:13.2f} "
            f"{r['batches_per_epoch']:14d} {r['cpu_s_per_batch'] * r['batches_per_epoch']:19.0f}"
        )
    if args.json:
        write_json(args.json, {"load_average": os.getloadavg(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
