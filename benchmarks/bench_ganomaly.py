"""GANomaly across seeds: the real MVTec bottle, and scikit-learn's digits one-class (the paper's protocol
is MNIST one-class), beside the pixel-PCA baseline of `bench_digits.py`.

GANomaly's scores are known to swing from run to run (users of the reference report image AUROC between
~0.23 and ~0.51 on MVTec categories), so every figure is a mean ± std over seeds, with each seed's value.

    .venv/bin/python benchmarks/bench_ganomaly.py bottle --seeds 0 1 2 --json ganomaly_bottle.json
    .venv/bin/python benchmarks/bench_ganomaly.py digits --seeds 0 1 2 --json ganomaly_digits.json

``bottle`` uses the ``cpu`` preset (``--set KEY=VALUE`` overrides options); ``digits`` trains at 32 px (the
paper's MNIST size) for ``--epochs`` epochs on half of one digit and tests on its other half plus every
other digit. CPU time is measured with one torch thread (``--threads``).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_digits import pixel_pca_scores  # noqa: E402

from adlearn.models import create  # noqa: E402


def parse_set(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, raw = pair.split("=", 1)
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def run_bottle(args, options: dict) -> dict:
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import fit_and_evaluate

    root = os.environ.get("ADLEARN_MVTEC_ROOT", "/work/shared/data/mvtec_ad")
    runs = []
    for seed in args.seeds:
        model = create("ganomaly", preset="cpu", device="cpu", seed=seed, **options)
        train = MVTecDataset(root, "bottle", "train", transform=model.transform)
        test = MVTecDataset(root, "bottle", "test", transform=model.transform)
        cpu_start = time.process_time()
        results = fit_and_evaluate(model, train, test)
        run = {"seed": seed, "image_auroc": results["image_auroc"], "fit_seconds": results["fit_seconds"],
               "cpu_seconds": time.process_time() - cpu_start, "epochs": len(model.history.epoch),
               "epoch_seconds": float(np.mean(model.history.seconds))}
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    aurocs = [r["image_auroc"] for r in runs]
    print(f"bottle, GANomaly cpu preset {options or ''}: image AUROC {summary(aurocs)}; "
          f"fit {np.mean([r['fit_seconds'] for r in runs]):.0f} s per seed")
    return {"options": options, "runs": runs, "mean": float(np.mean(aurocs)), "std": float(np.std(aurocs))}


def run_digits(args, options: dict) -> dict:
    from adlearn.data import digit_images, one_class_split

    images, labels = digit_images(size=32)
    raw = load_digits().data.astype(np.float64)
    table = {"ganomaly": {}, "pixels + PCA error (scikit-learn)": {}}
    began = time.perf_counter()
    for digit in range(10):
        ganomaly, pca = [], []
        for seed in args.seeds:
            split = one_class_split(labels, digit, n_others=None, seed=seed)
            model = create("ganomaly", image_size=32, device="cpu", seed=seed, max_epochs=args.epochs,
                           **options)
            model.fit(images[split.train], verbose=False)
            scores = model.predict(images[split.test]).pred_score.numpy()
            ganomaly.append(float(roc_auc_score(split.is_anomalous, scores)))
            baseline = pixel_pca_scores(raw[split.train.numpy()], raw[split.test.numpy()], seed)
            pca.append(float(roc_auc_score(split.is_anomalous, baseline)))
        table["ganomaly"][digit], table["pixels + PCA error (scikit-learn)"][digit] = ganomaly, pca
        print(f"digit {digit}: GANomaly {summary(ganomaly)}; PCA {summary(pca)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    print(f"\nimage AUROC, mean ± std over seeds {args.seeds} (32 px, {args.epochs} epochs, {seconds:.0f} s)\n")
    print("| normal digit | GANomaly | pixels + PCA error (scikit-learn) |\n|---|---|---|")
    for digit in range(10):
        cells = [f"{np.mean(v[digit]):.3f} ± {np.std(v[digit]):.3f}" for v in table.values()]
        print(f"| {digit} | " + " | ".join(cells) + " |")
    means = [np.mean([np.mean(v[d]) for d in range(10)]) for v in table.values()]
    print("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return {"options": options, "epochs": args.epochs, "seconds": seconds, "auroc": table}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=["bottle", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15, help="digits: epochs per fit (the paper's MNIST runs: 15)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = parse_set(args.set)
    result = run_bottle(args, options) if args.data == "bottle" else run_digits(args, options)
    result.update(seeds=args.seeds, threads=args.threads, torch=torch.__version__)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
