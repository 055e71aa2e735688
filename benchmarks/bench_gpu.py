"""The speed figures the issues ask of a GPU, in one run: PatchCore, STFPM and FastFlow on CUDA.

No GPU was lent to the tasks that wrote adlearn so far, so these figures are still to be measured;
this driver makes it one command on a CUDA machine (it also runs on a CPU, which is how it is tested)::

    .venv/bin/python benchmarks/bench_gpu.py --json gpu.json                 # real bottle, device auto
    .venv/bin/python benchmarks/bench_gpu.py --backbone wide_resnet50_2     # paper backbone (needs the hub)
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --max-train 16 --epochs 1 --models patchcore

What it measures (targets from the issues, H100, real MVTec bottle at 256 px):

* PatchCore — ``fit`` seconds (features of every training image + coreset; target ≤ 2 s), end-to-end
  ``adlearn.evaluate`` (loading, predicting and scoring the test split: images per second, target
  ≥ 5× anomalib's ~11 img/s) and model-only predict throughput on preloaded batches of 32
  (target ≥ 500 img/s); with ``--nn-half`` the bank search ranks in bfloat16 and re-ranks exactly;
* STFPM and FastFlow — seconds per training epoch (209 images, batches of 32, AMP on CUDA).

Every timed region starts and ends with ``torch.cuda.synchronize()``; a warm-up pass runs first.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, mvtec_root, write_json  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from adlearn.machine import add_arguments, guard_from_args  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, function):
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def subset(dataset, n: int | None):
    from torch.utils.data import Subset

    return dataset if not n or n >= len(dataset) else Subset(dataset, list(range(n)))


def bench_patchcore(args, root: Path) -> dict:
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import collect_predictions, evaluate
    from adlearn.models import create

    model = create(
        "patchcore",
        backbone=args.backbone,
        pretrained=args.pretrained,
        device=args.device,
        seed=0,
        half_precision_search=args.nn_half,
    )
    train = subset(MVTecDataset(root, args.category, "train", transform=model.transform), args.max_train)
    test = MVTecDataset(root, args.category, "test", transform=model.transform)
    device = model.device
    warm = create("patchcore", backbone=args.backbone, pretrained=args.pretrained, device=args.device, seed=0)
    warm.fit(subset(train, 4))  # kernels, allocator, cuDNN choices
    _, fit_s = timed(device, lambda: model.fit(train))
    collect_predictions(model, subset(test, 8))  # warm-up of the predict path
    results, evaluate_s = timed(device, lambda: evaluate(model, test))
    images = torch.stack([test[i]["image"] for i in range(min(len(test), 32))]).to(device)
    model.predict(images)
    repeats = args.repeats
    _, predict_s = timed(device, lambda: [model.predict(images) for _ in range(repeats)])
    return {
        "model": "patchcore",
        "n_train": len(train),
        "n_test": len(test),
        "memory_bank": list(model.memory_bank.shape),
        "nn_half": args.nn_half,
        "fit_s": fit_s,
        "evaluate_s": evaluate_s,
        "evaluate_images_per_s": len(test) / evaluate_s,
        "predict_images_per_s": repeats * len(images) / predict_s,
        "image_auroc": results["image_auroc"],
        "pixel_auroc": results["pixel_auroc"],
    }


def bench_trained(name: str, args, root: Path) -> dict:
    from adlearn.data import MVTecDataset
    from adlearn.models import create

    model = create(
        name, backbone=args.backbone, pretrained=args.pretrained, device=args.device, seed=0, max_epochs=args.epochs
    )
    train = subset(MVTecDataset(root, args.category, "train", transform=model.transform), args.max_train)
    epoch_seconds = []

    def on_epoch(trainer, record):
        synchronize(model.device)
        now = time.perf_counter()
        epoch_seconds.append(now - on_epoch.last)
        on_epoch.last = now

    synchronize(model.device)
    on_epoch.last = time.perf_counter()
    model.fit(train, callbacks=[on_epoch], progress=False, verbose=False)
    later = epoch_seconds[1:] or epoch_seconds
    return {
        "model": name,
        "n_train": len(train),
        "epochs": len(epoch_seconds),
        "epoch_s": epoch_seconds,
        "epoch_s_after_warmup": sorted(later)[len(later) // 2],
        "amp": str(model.amp),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="patchcore,stfpm,fastflow")
    parser.add_argument(
        "--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT; neither: the embedded synthetic data)"
    )
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--pretrained", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-train", type=int, help="use only the first N training images")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per trained model (first = warm-up)")
    parser.add_argument("--repeats", type=int, default=20, help="predict passes over one batch of 32")
    parser.add_argument("--nn-half", action="store_true", help="PatchCore: bf16 ranking + exact re-rank")
    parser.add_argument("--json", help="write the results here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    guard = guard_from_args(args)

    root = mvtec_root(args.root, required=False)
    if root is None or not (root / args.category).is_dir():
        from adlearn.data import synthetic_root

        where = "no --root / ADLEARN_MVTEC_ROOT" if root is None else f"{root / args.category} not found"
        print(f"{where}: using the embedded synthetic data ('weave')", file=sys.stderr)
        root, args.category = synthetic_root(), "weave"
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        with guard.measure(name):
            row = bench_patchcore(args, root) if name == "patchcore" else bench_trained(name, args, root)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__,
        "backbone": args.backbone,
        "category": args.category,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": guard.summary(),
    }
    if args.json:
        write_json(args.json, {"meta": meta, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
