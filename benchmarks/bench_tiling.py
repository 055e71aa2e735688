"""Tiled against resized PatchCore on high-resolution images with small defects: AUROC and time.

Run from the repository root with adlearn's venv::

    .venv/bin/python benchmarks/bench_tiling.py                       # 1,024 px, tiles of 256, marble
    .venv/bin/python benchmarks/bench_tiling.py --image-size 512 --tile 128 --category pill

The data: the embedded synthetic generator's *fine* defects (``synthetic_root(defects="fine")``: hairline
cracks, thin scratches and specks a few pixels wide) at ``--image-size`` px, one category.

The two models, both PatchCore with the ``cpu`` preset (offline efficientnet_lite0), on the same images:

* **resized** — ``image_size=--tile``: every image resized to the tile size (what a model built for 256-px
  inputs does with a 1,024-px image);
* **tiled** — ``image_size=--image-size, tiling=(--tile, --stride)``: every image cut into tiles at full
  resolution (`adlearn.models.tiled.TiledModel`).

Held equal: the memory bank's size. The tiled model's training set has N tiles per image, so its coreset
ratio is the resized model's divided by N (``--coreset-ratio`` is the resized model's); both banks keep the
same number of patches, and the time difference is the cost of extracting and searching N times more
patches, not of a larger bank.

Metrics at full resolution for both: the resized model's map is upsampled (bilinear) to ``--image-size``
and scored against the full-resolution masks (pixel AUROC); image AUROC from each model's image score.
Timings: fit and predict, wall and process-CPU seconds (``_common.clock``). Writes
``benchmarks/results/side_by_side/tiling.json`` (or ``--json``) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, clock, since, write_json  # noqa: E402


def run(model, train, test, full_masks, image_size: int) -> dict:
    """Fit, predict the test split; metrics at full resolution; wall and CPU seconds."""
    import torch
    import torch.nn.functional as F

    from adlearn.evaluate import collect_predictions
    from adlearn.metrics import image_auroc, pixel_auroc

    start = clock()
    model.fit(train)
    fit_wall, fit_cpu = since(start)
    start = clock()
    predictions = collect_predictions(model, test)
    predict_wall, predict_cpu = since(start)
    maps = torch.from_numpy(predictions["anomaly_maps"])  # (N, h, w): the model's own resolution
    if maps.shape[-1] != image_size:
        maps = F.interpolate(maps[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
    return {
        "image_auroc": image_auroc(predictions["labels"], predictions["pred_scores"]),
        "pixel_auroc": pixel_auroc(full_masks, maps.numpy()),
        "map_size": int(predictions["anomaly_maps"].shape[-1]),
        "memory_bank_rows": int(sum(member.memory_bank.shape[0] for member in getattr(model, "members", [model]))),
        "fit_wall_s": fit_wall,
        "fit_cpu_s": fit_cpu,
        "predict_wall_s": predict_wall,
        "predict_cpu_s": predict_cpu,
        "config": {k: v for k, v in model.config.items() if isinstance(v, (int, float, str, bool, tuple, type(None)))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=None, help="default: the tile size (tiles side by side)")
    parser.add_argument("--category", default="marble")
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-test-good", type=int, default=10)
    parser.add_argument("--n-test-defect", type=int, default=15)
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="the resized model's (paper's) ratio")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(REPO_ROOT / "benchmarks" / "results" / "side_by_side" / "tiling.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import adlearn
    from adlearn.components import Tiler
    from adlearn.data import MVTecDataset, synthetic_root
    from adlearn.machine import load_average, machine_info

    torch.set_num_threads(args.threads)
    stride = args.stride or args.tile
    start = clock()
    root = synthetic_root(
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        defects="fine",
        categories=args.category,
    )
    data_wall, _ = since(start)
    common = dict(preset="cpu", device="cpu", seed=0)
    resized = adlearn.create("patchcore", image_size=args.tile, coreset_sampling_ratio=args.coreset_ratio, **common)
    n_tiles = Tiler(args.tile, stride).n_tiles(args.image_size, args.image_size)
    tiled = adlearn.create(
        "patchcore",
        image_size=args.image_size,
        tiling=(args.tile, stride),
        coreset_sampling_ratio=args.coreset_ratio / n_tiles,  # the same bank size as the resized model's
        **common,
    )
    full_test = MVTecDataset(root, args.category, split="test", transform=tiled.transform)
    full_masks = np.stack([full_test[i]["mask"].numpy() for i in range(len(full_test))])  # (N, S, S)
    rows = {}
    for label, model in (("resized", resized), ("tiled", tiled)):
        train = MVTecDataset(root, args.category, split="train", transform=model.transform)
        test = MVTecDataset(root, args.category, split="test", transform=model.transform)
        print(f"{label}: fitting on {len(train)} images, testing on {len(test)} ...", file=sys.stderr)
        rows[label] = run(model, train, test, full_masks, args.image_size)
    results = {
        "benchmark": "tiling",
        "data": {
            "generator": "synthetic_root(defects='fine')",
            "category": args.category,
            "image_size": args.image_size,
            "n_train": args.n_train,
            "n_test_good": args.n_test_good,
            "n_test_defect": args.n_test_defect,
            "generate_wall_s": data_wall,
        },
        "tile": args.tile,
        "stride": stride,
        "tiles_per_image": n_tiles,
        "threads": args.threads,
        "machine": machine_info(),
        "load_average": load_average(),
        "pixel_auroc_gain": rows["tiled"]["pixel_auroc"] - rows["resized"]["pixel_auroc"],
        "models": rows,
        "adlearn_version": adlearn.__version__,
    }
    path = write_json(args.json, results)
    print(
        f"PatchCore (cpu preset) on synthetic '{args.category}' fine defects at {args.image_size} px: "
        f"resized to {args.tile} vs {n_tiles} tiles of {args.tile} (stride {stride}), {args.threads} threads"
    )
    print("| run | map | image AUROC | pixel AUROC (full res) | bank rows | fit s (CPU s) | predict s (CPU s) |")
    print("|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        print(
            f"| {label} | {row['map_size']} px | {row['image_auroc']:.3f} | {row['pixel_auroc']:.3f} | "
            f"{row['memory_bank_rows']} | {row['fit_wall_s']:.1f} ({row['fit_cpu_s']:.1f}) | "
            f"{row['predict_wall_s']:.1f} ({row['predict_cpu_s']:.1f}) |"
        )
    print(f"pixel AUROC gain of tiling: {results['pixel_auroc_gain']:+.3f}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
