"""WinCLIP+'s visual memory with k = 1, 2, 4, 8 reference images, beside PatchCore given the same k images.

Offline: WinCLIP runs its ``cpu`` preset (the few-shot branch on the packaged efficientnet_lite0 encoder,
windows pooled over k × k patches; no CLIP weights, so no zero-shot half). For each k and each of three
seeds the model chooses its k reference images from the training split at random (``seed``); PatchCore
(``cpu`` preset: the same encoder, its ``layer2 + layer3`` locally aware features) is fitted on exactly
those images, with every patch kept (``coreset_sampling_ratio=1.0``: k images make a small memory), at the
same 240 px. Both are scored on the whole test split, which neither ever fits on.

    ADLEARN_MVTEC_ROOT=/data/mvtec_ad .venv/bin/python benchmarks/bench_winclip_fewshot.py
    .venv/bin/python benchmarks/bench_winclip_fewshot.py --root /data/mvtec_ad --shots 1 4 --seeds 0

It prints a table (mean ± standard deviation over the seeds) and writes every run to
``benchmarks/results/side_by_side/winclip_fewshot_<category>.json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from _common import clock, mvtec_category, mvtec_root, since, write_json  # noqa: E402

IMAGE_SIZE = 240  # CLIP ViT-B/16+'s input; the offline encoder uses it too


def run(model_name: str, options: dict, train, test, indices: torch.Tensor | None = None) -> dict:
    """Fit ``model_name`` (on ``train``, or on the images ``indices`` of it) and score the test split."""
    from torch.utils.data import Subset

    import adlearn
    from adlearn.evaluate import evaluate

    model = adlearn.create(model_name, preset="cpu", device="cpu", image_size=IMAGE_SIZE, **options)
    start = clock()
    model.fit(train if indices is None else Subset(train, indices.tolist()))
    fit_seconds = since(start)
    metrics = evaluate(model, test)
    return {
        "model": model_name,
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": metrics["pixel_auroc"],
        "pixel_aupro": metrics["pixel_aupro"],
        "fit_wall_s": fit_seconds[0],
        "predict_wall_s": metrics["predict_seconds"],
        "reference_indices": getattr(model, "reference_indices", indices).tolist(),
    }


def table(rows: list[dict], shots: list[int]) -> str:
    def cell(model: str, k: int, key: str) -> str:
        values = [row[key] for row in rows if row["model"] == model and row["k"] == k]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    lines = [
        "| k | WinCLIP+ image AUROC | PatchCore image AUROC | WinCLIP+ pixel AUROC | PatchCore pixel AUROC |",
        "|---|---|---|---|---|",
    ]
    for k in shots:
        lines.append(
            f"| {k} | {cell('winclip', k, 'image_auroc')} | {cell('patchcore', k, 'image_auroc')} | "
            f"{cell('winclip', k, 'pixel_auroc')} | {cell('patchcore', k, 'pixel_auroc')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="MVTec AD root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="where to write the runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from adlearn.data import ImageTransform, MVTecDataset

    root = mvtec_root(args.root)
    mvtec_category(root, args.category)
    transform = ImageTransform(image_size=IMAGE_SIZE)
    train = MVTecDataset(root, args.category, split="train", transform=transform)
    test = MVTecDataset(root, args.category, split="test", transform=transform)

    rows = []
    for k in args.shots:
        for seed in args.seeds:
            options = dict(k_shot=k, seed=seed, class_name=args.category)
            winclip = run("winclip", options, train, test)
            indices = torch.tensor(winclip["reference_indices"])
            patchcore = run("patchcore", dict(seed=seed, coreset_sampling_ratio=1.0), train, test, indices)
            for row in (winclip, patchcore):
                rows.append({"k": k, "seed": seed, **row})
                print(
                    f"k={k} seed={seed} {row['model']:9s} image AUROC {row['image_auroc']:.3f} "
                    f"pixel AUROC {row['pixel_auroc']:.3f}",
                    flush=True,
                )
    print(table(rows, args.shots))
    path = args.json or BENCH_DIR / "results" / "side_by_side" / f"winclip_fewshot_{args.category}.json"
    write_json(
        path,
        {
            "what": "WinCLIP+ (cpu preset: offline efficientnet_lite0 encoder, few-shot branch) vs PatchCore on the "
            "same k reference images, 240 px",
            "category": args.category,
            "threads": args.threads,
            "n_train": len(train),
            "n_test": len(test),
            "runs": rows,
            "table": table(rows, args.shots),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
