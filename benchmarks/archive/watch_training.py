"""Learning curves of a trained model, with the *test* set watched after every epoch (never used to choose).

Trains ``MODEL`` exactly as ``adlearn evaluate MODEL --set KEY=VALUE ...`` would (same options, same
early stopping on held-out training images), and after each epoch also scores the test set: image
and pixel AUROC with scikit-learn. The epoch the model keeps is still chosen by its own validation;
the watched values only show what that choice left on the table. The test is scored on the model as
the loop leaves it after the epoch (for STFPM: with the student's batch-norm statistics re-estimated,
``precise_bn``, whenever it validates).

    .venv/bin/python benchmarks/archive/watch_training.py stfpm --root $ADLEARN_MVTEC_ROOT --category bottle \\
        --set backbone=efficientnet_lite0 --set val_fraction=0.2 --set max_epochs=25 --json stfpm_s0.json
    .venv/bin/python benchmarks/archive/watch_training.py fastflow --root $ADLEARN_MVTEC_ROOT --category bottle \\
        --set backbone=efficientnet_lite2 --set "layers=('layer2','layer3','layer4')" --set conv3x3_only=True \\
        --set batch_size=8 --set val_fraction=0.2 --set val_anomalies=synthetic --seed 1
    .venv/bin/python benchmarks/archive/watch_training.py uflow --preset cpu --root $ADLEARN_MVTEC_ROOT --category bottle \\
        --seed 1 --set max_epochs=12 --set patience=None     # what an oracle stopping rule could reach

Without ``--root`` it runs on the embedded synthetic data. One line per epoch; ``--json`` writes the
curve, the kept epoch and the final test scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset, synthetic_root
from adlearn.models import create
from adlearn.options import parse_set as _parse_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common, bench_trained_models
from _common import clock, since, write_json  # noqa: E402
from bench_trained_models import test_scores  # noqa: E402  (image and pixel AUROC by scikit-learn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--root", default=None, help="MVTec-layout folder (default: the embedded synthetic data)")
    parser.add_argument("--category", default=None)
    parser.add_argument("--preset", default=None, help="start from the model's named recipe (e.g. cpu); --set wins")
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's, else 256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    options = {"device": "cpu", "seed": args.seed, **_parse_set(args.set)}
    if args.image_size or not args.preset:
        options["image_size"] = args.image_size or 256
    model = create(args.model, preset=args.preset, **options)
    size = model.image_size if isinstance(model.image_size, int) else max(model.image_size)
    root = args.root or synthetic_root(image_size=size, seed=args.seed)
    category = args.category or ("bottle" if args.root else SYNTHETIC_CATEGORIES[0])
    train = MVTecDataset(root, category, "train", transform=model.transform)
    test = MVTecDataset(root, category, "test", transform=model.transform)

    curve = []

    def watch(trainer, record):
        image, pixel = test_scores(model, test)
        curve.append(
            {
                "epoch": record["epoch"],
                "loss": record["loss"],
                "val": record["val"],
                "test_image_auroc": image,
                "test_pixel_auroc": pixel,
            }
        )
        pixel_text = "—" if pixel is None else f"{pixel:.4f}"
        print(f"  watched: test image AUROC {image:.4f}, pixel AUROC {pixel_text}", flush=True)

    start = clock()
    model.fit(train, callbacks=[watch], progress=False)
    image, pixel = test_scores(model, test)
    result = {
        "model": args.model,
        "category": category,
        "preset": args.preset,
        "options": {k: repr(v) for k, v in options.items()},
        "kept_epoch": model.history.best_epoch,
        "epochs_run": len(model.history.epoch),
        "test_image_auroc": image,
        "test_pixel_auroc": pixel,
        "curve": curve,
        "seconds": since(start)[0],
    }
    print(
        f"kept epoch {result['kept_epoch']} of {result['epochs_run']}: test image AUROC {image:.4f}"
        + ("" if pixel is None else f", pixel AUROC {pixel:.4f}")
    )
    if args.json:
        write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
