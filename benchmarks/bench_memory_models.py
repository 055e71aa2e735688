"""PatchCore, DFKDE and DFM side by side: adlearn vs anomalib 2.7 on the same data, weights and threads.

Run from the repository root with adlearn's venv; anomalib runs in its own venv as a subprocess
(``benchmarks/_anomalib.py``, see ``benchmarks/README.md``)::

    .venv/bin/python benchmarks/bench_memory_models.py                          # all three, real bottle if present
    .venv/bin/python benchmarks/bench_memory_models.py --models patchcore --max-train 60
    .venv/bin/python benchmarks/bench_memory_models.py --data synthetic --category weave --json out.json
    .venv/bin/python benchmarks/bench_memory_models.py --no-anomalib             # adlearn only (fast)

What is held equal on both sides (as in ``bench_padim.py``, whose data and timing helpers we reuse):

* data — the same MVTec-layout folder, ImageNet normalization, batches of 32. PatchCore: resize 256
  then center crop 224 (the paper's and MODELS.md's transform; anomalib 2.7's default pre-processor
  has no crop, so the crop is switched on in the anomalib process by giving
  ``Patchcore.configure_pre_processor`` a default ``center_crop_size``). DFKDE and DFM: resize 256,
  no crop (anomalib's default). ``--max-train N`` keeps N evenly spaced training images (a folder of
  copies), for runs where anomalib's PatchCore fit would take too long on a small machine; the
  test split is always complete;
* backbone — ``efficientnet_lite0`` with the packaged offline ImageNet weights on both sides; adlearn's
  ResNet-style layer names map to the same stages anomalib is given by name: PatchCore
  ``layer2, layer3`` = ``blocks.2, blocks.4``; DFKDE ``layer4`` = ``blocks.6``; DFM ``layer3`` =
  ``blocks.4``. A features check on a fixed random image compares both extractors;
* hyper-parameters — the documented defaults (PatchCore ratio 0.1, 9 neighbours; DFKDE 16 PCA
  components, "scale", 40000 points; DFM pooling 4, 97 % variance, "fre");
* threads — ``torch.set_num_threads(--threads)`` in both processes;
* metrics — image (and pixel, when both sides give maps) AUROC computed here with scikit-learn on the
  raw scores and maps, against adlearn's loaded ground truth.

Timings. adlearn "fit" is ``model.fit(train_loader)`` (feature pass + bank fit). anomalib's
``Engine.fit`` also runs a validation pass over the test split and writes a checkpoint, so its
comparable figure is the training loop (feature pass) plus the memory-bank ``fit()`` — reported as
``fit (train loop + bank fit)``; the whole ``Engine.fit`` is reported too. "predict" is one pass over
the test split including image loading. Wall-clock and process-CPU seconds are recorded; on a
machine shared with other jobs the CPU seconds are the steadier measure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from _common import anomalib_python, clock, since, write_json  # noqa: E402
from bench_padim import (  # noqa: E402  (shared helpers of the benchmark drivers)
    BACKBONE,
    IMAGE_SIZE,
    feature_check,
    ratio,
    resolve_data,
    run_anomalib_process,
    time_fit_phases,
)

from adlearn.machine import add_arguments, guard_from_args  # noqa: E402

TARGET_AUROC_GAP = 0.01
CROP = 224  # PatchCore's center crop of the 256-px resize

# For each model: adlearn's create() options, anomalib's class and init, the center crop, the targets.
MODELS: dict[str, dict] = {
    "patchcore": {
        "adlearn": {
            "layers": ("layer2", "layer3"),
            "coreset_sampling_ratio": 0.1,
            "num_neighbors": 9,
            "center_crop": CROP,
        },
        "anomalib": {
            "model": "Patchcore",
            "init": {"layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1, "num_neighbors": 9},
        },
        "crop": CROP,
        "targets": {"fit_speedup": 10.0, "predict_speedup": 2.0},
    },
    "dfkde": {
        "adlearn": {
            "layers": ("layer4",),
            "n_pca_components": 16,
            "feature_scaling_method": "scale",
            "max_training_points": 40000,
        },
        "anomalib": {
            "model": "Dfkde",
            "init": {"layers": ["blocks.6"], "n_pca_components": 16, "max_training_points": 40000},
        },
        "crop": None,
        "targets": {},
    },
    "dfm": {
        "adlearn": {"layer": "layer3", "pooling_kernel_size": 4, "pca_level": 0.97, "score_type": "fre"},
        "anomalib": {
            "model": "Dfm",
            "init": {"layer": "blocks.4", "pooling_kernel_size": 4, "pca_level": 0.97, "score_type": "fre"},
        },
        "crop": None,
        "targets": {},
    },
}

# Runs _anomalib.main in anomalib's python; for PatchCore, first makes the paper's center crop the default.
ANOMALIB_WRAPPER = """
import sys
sys.path.insert(0, {bench_dir!r})
import _anomalib
crop = {crop!r}
if crop:
    from anomalib.models import Patchcore
    default = Patchcore.configure_pre_processor
    Patchcore.configure_pre_processor = classmethod(
        lambda cls, image_size=None, center_crop_size=None: default(image_size, center_crop_size or (crop, crop)))
sys.exit(_anomalib.main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- data
def training_subset(root: Path, category: str, max_train: int, workdir: Path) -> Path:
    """A copy of ``root/category`` with only ``max_train`` evenly spaced training images.

    Files are hard-linked where possible, else copied: anomalib's dataset rejects symlinks that
    resolve outside its root.
    """
    source = root / category
    images = sorted((source / "train" / "good").iterdir())
    step = len(images) / max_train
    kept = {images[int(i * step)] for i in range(min(max_train, len(images)))}
    target = workdir / "subset" / category
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or (relative.parts[0] == "train" and path not in kept):
            continue
        copy = target / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, copy)
        except OSError:
            shutil.copy2(path, copy)
    return workdir / "subset"


# ----------------------------------------------------------------------------- adlearn side
def run_adlearn(name: str, root: Path, category: str, threads: int, batch_size: int) -> tuple[dict, dict]:
    from torch.utils.data import DataLoader

    from adlearn.data import MVTecDataset
    from adlearn.models import create

    torch.set_num_threads(threads)
    began = clock()
    model = create(
        name,
        backbone=BACKBONE,
        pretrained="auto",
        image_size=IMAGE_SIZE,
        device="cpu",
        seed=0,
        batch_size=batch_size,
        **MODELS[name]["adlearn"],
    )
    setup = since(began)

    phases = time_fit_phases(model)
    train = MVTecDataset(root, category, split="train", transform=model.transform)
    test = MVTecDataset(root, category, split="test", transform=model.transform)

    began = clock()
    model.fit(DataLoader(train, batch_size=batch_size, shuffle=False))
    fit = since(began)

    scores, maps, labels, masks, paths = [], [], [], [], []
    began = clock()
    for batch in DataLoader(test, batch_size=batch_size, shuffle=False):
        prediction = model.predict(batch["image"])
        scores.append(prediction.pred_score)
        if prediction.anomaly_map is not None:
            maps.append(prediction.anomaly_map)
        labels.append(batch["label"])
        masks.append(batch["mask"])
        paths.extend(batch["image_path"])
    predict = since(began)

    report = {
        "setup_s": setup[0],
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "predict_s": predict[0],
        "predict_cpu_s": predict[1],
        "fit_phases": {phase: {"s": wall, "cpu_s": cpu} for phase, (wall, cpu) in phases.items()},
        "n_train": len(train),
        "n_test": len(test),
        "threads": torch.get_num_threads(),
        "feature_check": feature_check(model.feature_extractor),
    }
    if name == "patchcore":
        report["memory_bank"] = list(model.memory_bank.shape)
    arrays = {
        "pred_score": torch.cat(scores).numpy(),
        "gt_label": torch.cat(labels).numpy(),
        "gt_mask": torch.cat(masks).numpy() > 0.5,
        "image_path": np.array(paths),
    }
    if maps:
        arrays["anomaly_map"] = torch.cat(maps).numpy()
    return report, arrays


# ----------------------------------------------------------------------------- anomalib side
def run_anomalib(name: str, root: Path, category: str, threads: int, batch_size: int, python: str) -> tuple[dict, dict]:
    config = MODELS[name]["anomalib"]
    spec = {
        "model": config["model"],
        "init": {"backbone": BACKBONE, "pre_trained": True, **config["init"]},
        "root": str(root),
        "category": category,
        "image_size": IMAGE_SIZE,
        "batch_size": batch_size,
        "num_workers": 0,
        "threads": threads,
        "seed": 0,
    }
    wrapper = ANOMALIB_WRAPPER.format(bench_dir=str(BENCH_DIR), crop=MODELS[name]["crop"])
    report, arrays = run_anomalib_process([python, "-c", wrapper, "--no-test"], spec, threads, name)
    phases = report.get("fit_phases", {})
    train_and_bank = [phases.get(key) for key in ("train_loop", "bank_fit")]
    if all(train_and_bank):
        report["fit_train_bank_s"] = sum(p["s"] for p in train_and_bank)
        report["fit_train_bank_cpu_s"] = sum(p["cpu_s"] for p in train_and_bank)
    return report, arrays


# ----------------------------------------------------------------------------- metrics
def aurocs(ours: dict, theirs: dict | None) -> dict:
    """Image (and pixel) AUROC of each side with scikit-learn, on adlearn's ground truth."""
    from sklearn.metrics import roc_auc_score

    labels, masks = ours["gt_label"].astype(int), ours["gt_mask"].astype(bool)

    def side(scores, maps) -> dict:
        result = {"image_auroc": float(roc_auc_score(labels, scores))}
        if maps is not None:
            result["pixel_auroc"] = float(roc_auc_score(masks.ravel(), maps.ravel()))
        return result

    result = {"adlearn": side(ours["pred_score"], ours.get("anomaly_map"))}
    if theirs is None:
        return result

    def key(path) -> str:  # "<defect>/<file>": how both sides name a test image
        path = Path(str(path))
        return f"{path.parent.name}/{path.name}"

    position = {key(path): i for i, path in enumerate(theirs["image_path"])}
    names = [key(path) for path in ours["image_path"]]
    if sorted(position) != sorted(names):
        sys.exit("the two sides did not see the same test images")
    order = np.array([position[name] for name in names])  # anomalib rows in adlearn's order
    their_maps = theirs["anomaly_map"][order] if "anomaly_map" in theirs and "anomaly_map" in ours else None
    if their_maps is not None and their_maps.shape != ours["anomaly_map"].shape:
        sys.exit(f"map sizes differ: adlearn {ours['anomaly_map'].shape}, anomalib {their_maps.shape}")
    result["anomalib"] = side(theirs["pred_score"][order], their_maps)
    result["score_spearman"] = float(
        np.corrcoef(np.argsort(np.argsort(ours["pred_score"])), np.argsort(np.argsort(theirs["pred_score"][order])))[
            0, 1
        ]
    )
    return result


# ----------------------------------------------------------------------------- report
def verdict(name: str, ours: dict, theirs: dict | None, metrics: dict) -> dict:
    if theirs is None:
        return {}
    their_fit = theirs.get("fit_train_bank_s", theirs["fit_s"])
    their_fit_cpu = theirs.get("fit_train_bank_cpu_s", theirs["fit_cpu_s"])
    result = {
        "fit_speedup_wall": ratio(their_fit, ours["fit_s"]),
        "fit_speedup_cpu": ratio(their_fit_cpu, ours["fit_cpu_s"]),
        "engine_fit_speedup_wall": ratio(theirs["fit_s"], ours["fit_s"]),
        "predict_speedup_wall": ratio(theirs["predict_s"], ours["predict_s"]),
        "predict_speedup_cpu": ratio(theirs["predict_cpu_s"], ours["predict_cpu_s"]),
        "auroc_max_gap": max(abs(metrics["adlearn"][k] - metrics["anomalib"][k]) for k in metrics["anomalib"]),
    }
    targets = MODELS[name]["targets"]
    if result["fit_speedup_cpu"] is None or result["predict_speedup_cpu"] is None:
        result["met"] = None  # measured under load: not judged
        return result
    result["met"] = bool(
        result["auroc_max_gap"] <= TARGET_AUROC_GAP
        and result["fit_speedup_cpu"] >= targets.get("fit_speedup", 0)
        and result["predict_speedup_cpu"] >= targets.get("predict_speedup", 0)
    )
    return result


def print_table(name: str, result: dict) -> None:
    ours, theirs, metrics = result["adlearn"], result.get("anomalib"), result["auroc"]
    print(
        f"\n{name} on {result['data']['kind']}/{result['data']['category']} ({ours['n_train']} train, "
        f"{ours['n_test']} test), {result['threads']} threads"
    )
    print(f"{'':34s}{'adlearn':>10s}{'anomalib':>10s}{'speed-up':>10s}")
    rows = [
        ("fit s (features + bank)", "fit_s", "fit_train_bank_s"),
        ("fit CPU s", "fit_cpu_s", "fit_train_bank_cpu_s"),
        ("anomalib Engine.fit s (+ val pass)", None, "fit_s"),
        ("predict s (test split)", "predict_s", "predict_s"),
        ("predict CPU s", "predict_cpu_s", "predict_cpu_s"),
    ]
    for label, our_key, their_key in rows:
        a = ours.get(our_key) if our_key else None
        b = theirs.get(their_key) if theirs else None
        speedup = ratio(b, a)
        print(
            f"{label:34s}{(f'{a:10.1f}' if a is not None else f'{chr(45):>10s}')}"
            f"{(f'{b:10.1f}' if b is not None else f'{chr(45):>10s}')}{(f'{speedup:9.1f}x' if speedup else f'{chr(45):>10s}')}"
        )
    for key in ("image_auroc", "pixel_auroc"):
        if key in metrics["adlearn"]:
            a, b = metrics["adlearn"][key], (metrics.get("anomalib") or {}).get(key)
            print(f"{key.replace('_', ' '):34s}{a:10.4f}" + (f"{b:10.4f}{a - b:+10.4f}" if b is not None else ""))
    print("adlearn fit phases (wall s): " + ", ".join(f"{k} {v['s']:.1f}" for k, v in ours["fit_phases"].items()))
    if theirs:
        print(
            "anomalib fit phases (wall s): "
            + ", ".join(f"{k} {v['s']:.1f}" for k, v in theirs.get("fit_phases", {}).items())
        )
        print(
            f"features check equal: {result['same_features']}; score rank correlation {metrics['score_spearman']:.4f}"
        )
        v = result["verdict"]
        if v["met"] is None:
            print("speed-ups not reported: measured under load (rerun on an idle machine or pass --allow-busy)")
            return
        print(
            f"speed-up (CPU): fit {v['fit_speedup_cpu']:.1f}x, predict {v['predict_speedup_cpu']:.1f}x; "
            f"max AUROC gap {v['auroc_max_gap']:.4f} -> targets {'MET' if v['met'] else 'NOT MET'} "
            f"{MODELS[name]['targets'] or ''}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PatchCore, DFKDE, DFM: adlearn vs anomalib, side by side")
    parser.add_argument("--models", default="patchcore,dfkde,dfm", help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument(
        "--data",
        choices=("auto", "bottle", "synthetic"),
        default="auto",
        help="auto: real bottle if --root or ADLEARN_MVTEC_ROOT has it, else synthetic",
    )
    parser.add_argument("--root", help="MVTec-layout root (default: ADLEARN_MVTEC_ROOT / the synthetic cache)")
    parser.add_argument("--category", help="category (default: bottle / ring)")
    parser.add_argument("--max-train", type=int, help="keep this many evenly spaced training images (both sides)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--no-anomalib", action="store_true", help="adlearn only")
    parser.add_argument(
        "--patchcore-crop",
        choices=("224", "none"),
        default="224",
        help="PatchCore's transform: resize 256 + center crop 224 (MODELS.md, 004; default) or "
        "'none' (anomalib 2.7's own default pre-processor: resize 256, no crop), both sides",
    )
    parser.add_argument("--json", help="write the full results here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    python = None if args.no_anomalib else anomalib_python(args.anomalib_python)
    guard = guard_from_args(args).activate()
    if args.patchcore_crop == "none":
        MODELS["patchcore"]["crop"] = None
        MODELS["patchcore"]["adlearn"]["center_crop"] = None

    names = [name for name in args.models.split(",") if name]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    kind, root, category = resolve_data(args.data, args.root, args.category)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-data-") as workdir:
        if args.max_train:
            root = training_subset(root, category, args.max_train, Path(workdir))
        for name in names:
            print(f"{name}: data {kind} {root / category}; adlearn first, then anomalib (subprocess)", flush=True)
            with guard.measure(f"adlearn {name}"):
                ours, our_arrays = run_adlearn(name, root, category, args.threads, args.batch_size)
            print(f"adlearn {name}: fit {ours['fit_s']:.1f} s, predict {ours['predict_s']:.1f} s", flush=True)
            theirs = their_arrays = None
            if not args.no_anomalib:
                with guard.measure(f"anomalib {name}"):
                    theirs, their_arrays = run_anomalib(name, root, category, args.threads, args.batch_size, python)
                print(f"anomalib {name}: fit {theirs['fit_s']:.1f} s, predict {theirs['predict_s']:.1f} s", flush=True)
            metrics = aurocs(our_arrays, their_arrays)
            result = {
                "benchmark": name,
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": guard.summary(),  # CPU model, cores, threads, load before/after each part
                "data": {"kind": kind, "category": category, "max_train": args.max_train},
                "config": {
                    "backbone": BACKBONE,
                    "image_size": IMAGE_SIZE,
                    "center_crop": MODELS[name]["crop"],
                    "adlearn": MODELS[name]["adlearn"],
                    "anomalib": MODELS[name]["anomalib"],
                },
                "threads": args.threads,
                "adlearn": ours,
                "anomalib": theirs,
                "auroc": metrics,
                "same_features": (
                    bool(np.allclose(ours["feature_check"], theirs["feature_check"], rtol=1e-4))
                    if theirs and theirs.get("feature_check")
                    else None
                ),
            }
            result["verdict"] = verdict(name, ours, theirs, metrics)
            print_table(name, result)
            results.append(result)
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
