"""The classification models on a real one-class problem: scikit-learn's digits, AUROC per class.

For each digit d: train on a random half of the d's, test on the other half (normal) plus every
other digit (anomalies) — `adlearn.data.one_class_split`. Models: DFKDE and DFM (both scores) on
``efficientnet_lite0`` features with the offline ImageNet weights, and, as a reference that owes
nothing to adlearn, scikit-learn's PCA reconstruction error on the raw 8×8 pixels (97 % variance,
the DFM recipe without a network). Prints a Markdown table; ``--json`` writes it too.

    .venv/bin/python benchmarks/bench_digits.py                 # 64 px, all ten digits, ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_digits.py --size 32 --json digits.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import clock, since, write_json  # noqa: E402

from adlearn.data import digit_images, one_class_split  # noqa: E402
from adlearn.machine import add_arguments, guard_from_args  # noqa: E402
from adlearn.models import create  # noqa: E402

BACKBONE = "efficientnet_lite0"


def adlearn_models(size: int, seed: int) -> dict:
    common = dict(backbone=BACKBONE, pretrained="auto", image_size=size, device="cpu", seed=seed)
    return {
        "DFKDE (layer4, 16 PCA comps)": create("dfkde", **common),
        # At 64 px layer3 (stride 16) is a 4x4 map: no pooling, or nothing would be left.
        "DFM fre (layer3, 97 %)": create("dfm", pooling_kernel_size=1, score_type="fre", **common),
        "DFM nll (layer3, 97 %)": create("dfm", pooling_kernel_size=1, score_type="nll", **common),
    }


def pixel_pca_scores(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    """Reconstruction error of raw pixels in the 97 %-variance PCA subspace of the training digits."""
    pca = PCA(n_components=0.97, svd_solver="full", random_state=seed).fit(train)
    reconstructed = pca.inverse_transform(pca.transform(test))
    return ((test - reconstructed) ** 2).sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="digits are upsampled to this many pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the table here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    guard = guard_from_args(args)  # AUROC only, no ratio: the machine and load are recorded beside it

    images, labels = digit_images(size=args.size)
    raw = load_digits().data.astype(np.float64)  # (1797, 64) raw grey levels
    models = adlearn_models(args.size, args.seed)
    columns = [*models, "pixels + PCA error (scikit-learn)"]
    table = {name: {} for name in columns}
    began = clock()
    with guard.measure("all digits"):
        run_digits(models, images, labels, raw, table, columns, args.seed)
    print(
        f"\nimage AUROC, train on half of one digit, test on its other half + all other digits "
        f"({args.size} px, seed {args.seed}, {since(began)[0]:.0f} s)\n"
    )
    print("| normal digit | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for digit in range(10):
        print(f"| {digit} | " + " | ".join(f"{table[name][digit]:.3f}" for name in columns) + " |")
    print("| **mean** | " + " | ".join(f"**{np.mean(list(table[name].values())):.3f}**" for name in columns) + " |")
    if args.json:
        write_json(
            args.json,
            {
                "size": args.size,
                "seed": args.seed,
                "backbone": BACKBONE,
                "torch": torch.__version__,
                "auroc": table,
                "machine": guard.summary(),
            },
        )
    return 0


def run_digits(models, images, labels, raw, table, columns, seed) -> None:
    for digit in range(10):
        split = one_class_split(labels, digit, n_others=None, seed=seed)
        for name, model in models.items():
            model.fit(images[split.train])  # refitting starts over
            scores = model.predict(images[split.test]).pred_score.numpy()
            table[name][digit] = float(roc_auc_score(split.is_anomalous, scores))
        scores = pixel_pca_scores(raw[split.train.numpy()], raw[split.test.numpy()], seed)
        table[columns[-1]][digit] = float(roc_auc_score(split.is_anomalous, scores))
        print(f"digit {digit}: " + ", ".join(f"{table[name][digit]:.3f}" for name in columns), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
