"""PaDiM side by side: adlearn vs anomalib 2.7, same data, same weights, same threads, same metric code.

Run from the repository root with adlearn's venv; anomalib runs in its own venv as a subprocess
(``benchmarks/_anomalib.py``)::

    .venv/bin/python benchmarks/bench_padim.py                      # real bottle if present, else synthetic
    .venv/bin/python benchmarks/bench_padim.py --data synthetic --category ring --json out.json

What is held equal on both sides:

* data — the same MVTec-layout folder; 256x256 resize, no center crop, ImageNet normalization
  (anomalib's default pre-processor), batches of 32, ``--num-workers`` loader workers (0: the
  main process loads the images);
* backbone — ``efficientnet_lite0`` with the packaged offline ImageNet weights (adlearn loads them
  itself; anomalib gets them injected into ``timm.create_model``), layers ``blocks.1/2/4`` (adlearn's
  ``layer1..layer3`` mapping); a features check on a fixed random image proves both extract the
  same features;
* model — 100 kept channels, and by default the *same* channel subset (adlearn's seeded draw is
  copied into anomalib's ``idx`` buffer; ``--anomalib-own-channels`` keeps anomalib's draw);
* threads — ``torch.set_num_threads(--threads)`` in both processes;
* metrics — image and pixel AUROC of both sides computed here by scikit-learn, on the raw scores and
  maps, against the same ground truth (adlearn's loaded masks). anomalib's own metric values
  (``Engine.test``, normalized outputs) are reported as well.

Timings: "fit" is ``model.fit(train_loader)`` for adlearn and ``Engine.fit`` for anomalib (which
also runs a validation pass over the test split to collect normalization statistics, and saves a
checkpoint); "predict" is one pass over the test split including image loading (``model.predict``
per batch / ``Engine.predict``). Wall-clock and process-CPU seconds are both recorded: on a machine
shared with other jobs the CPU seconds are steadier. Model construction is reported apart ("setup").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, anomalib_python, clock, mvtec_root, since, write_json  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from adlearn.machine import add_arguments, guard_from_args, guarded_ratio  # noqa: E402  (machine + load)

TARGET_TIME_RATIO = 0.5
TARGET_AUROC_GAP = 0.01

BACKBONE = "efficientnet_lite0"
ADLEARN_LAYERS = ("layer1", "layer2", "layer3")  # adlearn maps these to blocks.1/2/4 (same stride)
ANOMALIB_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
N_FEATURES = 100
IMAGE_SIZE = 256


# ----------------------------------------------------------------------------- data
def resolve_data(kind: str, root: str | None, category: str | None) -> tuple[str, Path, str]:
    """-> (kind, root, category). ``auto``: the real bottle when ``--root`` or ``ADLEARN_MVTEC_ROOT`` has it,
    else synthetic data."""
    real = mvtec_root(root, required=kind == "bottle")
    if kind == "auto":
        kind = "bottle" if real is not None and (real / "bottle" / "train" / "good").is_dir() else "synthetic"
    if kind == "bottle":
        category = category or "bottle"
        if not (real / category / "train" / "good").is_dir():
            sys.exit(
                f"no MVTec category at {real / category}: set ADLEARN_MVTEC_ROOT or --root, or use --data synthetic"
            )
        return kind, real, category
    from adlearn.data import synthetic_root

    synthetic = Path(root) if root else synthetic_root(image_size=IMAGE_SIZE)
    category = category or "ring"
    if not (synthetic / category / "train" / "good").is_dir():
        sys.exit(f"no synthetic category {category!r} under {synthetic}")
    return "synthetic", synthetic, category


# ----------------------------------------------------------------------------- timing
def time_fit_phases(model) -> dict:
    """Split a memory-bank model's ``fit`` into its two steps without touching the model: wraps
    ``collect`` and ``fit_bank`` and returns ``{step: [wall s, CPU s]}``, summed as they run."""
    phases = {"collect": [0.0, 0.0], "fit_bank": [0.0, 0.0]}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = clock()
            result = function(*args, **kwargs)
            wall, cpu = since(start)
            phases[name][0] += wall
            phases[name][1] += cpu
            return result

        return wrapper

    model.collect = timed("collect", model.collect)
    model.fit_bank = timed("fit_bank", model.fit_bank)
    return phases


def run_anomalib_process(command: list[str], spec: dict, threads: int, label: str) -> tuple[dict, dict]:
    """Run ``command + [--spec, --out]`` in anomalib's venv; return its JSON report and its arrays (.npz)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{label}-") as tmp:
        spec_file, out_file, log_file = Path(tmp) / "spec.json", Path(tmp) / "anomalib.json", Path(tmp) / "log.txt"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)
        with open(log_file, "w") as log:
            status = subprocess.run(
                command + ["--spec", str(spec_file), "--out", str(out_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
            ).returncode
        if status != 0:
            sys.exit(f"anomalib {label} run failed (exit {status}):\n" + log_file.read_text()[-4000:])
        report = json.loads(out_file.read_text())
        with np.load(out_file.with_suffix(".npz")) as data:
            arrays = {key: data[key] for key in data.files}
    return report, arrays


# ----------------------------------------------------------------------------- adlearn side
def run_adlearn(
    root: Path, category: str, threads: int, batch_size: int, num_workers: int
) -> tuple[dict, dict, object]:
    from torch.utils.data import DataLoader

    from adlearn.data import MVTecDataset
    from adlearn.models import create

    torch.set_num_threads(threads)
    began = clock()
    model = create(
        "padim",
        backbone=BACKBONE,
        layers=ADLEARN_LAYERS,
        pretrained="auto",
        n_features=N_FEATURES,
        image_size=IMAGE_SIZE,
        center_crop=None,
        device="cpu",
        seed=0,
        batch_size=batch_size,
    )
    setup = since(began)

    phases = time_fit_phases(model)

    train = MVTecDataset(root, category, split="train", transform=model.transform)
    test = MVTecDataset(root, category, split="test", transform=model.transform)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    began = clock()
    model.fit(train_loader)
    fit = since(began)

    scores, maps, labels, masks, paths = [], [], [], [], []
    began = clock()
    for batch in test_loader:
        prediction = model.predict(batch["image"])
        scores.append(prediction.pred_score)
        maps.append(prediction.anomaly_map)
        labels.append(batch["label"])
        masks.append(batch["mask"])
        paths.extend(batch["image_path"])
    predict = since(began)

    report = {
        "setup_s": setup[0],
        "setup_cpu_s": setup[1],
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "predict_s": predict[0],
        "predict_cpu_s": predict[1],
        "fit_predict_s": fit[0] + predict[0],
        "fit_predict_cpu_s": fit[1] + predict[1],
        "fit_phases": {name: {"s": wall, "cpu_s": cpu} for name, (wall, cpu) in phases.items()},
        "threads": torch.get_num_threads(),
        "n_train": len(train),
        "n_test": len(test),
        "feature_check": feature_check(model.feature_extractor),
    }
    arrays = {
        "pred_score": torch.cat(scores).numpy(),
        "anomaly_map": torch.cat(maps).numpy(),
        "gt_label": torch.cat(labels).numpy(),
        "gt_mask": torch.cat(masks).numpy() > 0.5,
        "image_path": np.array(paths),
    }
    return report, arrays, model


def feature_check(extractor, image_size: int = IMAGE_SIZE) -> list[float]:
    """Same probe as ``_anomalib.feature_check``: sums of each feature map on a fixed random image."""
    images = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = extractor(images)
    return [float(feature.double().sum()) for feature in features.values()]


# ----------------------------------------------------------------------------- anomalib side
def run_anomalib(
    root: Path,
    category: str,
    threads: int,
    batch_size: int,
    num_workers: int,
    channel_index: list[int] | None,
    python: str,
    with_test: bool,
) -> tuple[dict, dict]:
    spec = {
        "model": "Padim",
        "init": {"backbone": BACKBONE, "layers": ANOMALIB_LAYERS, "pre_trained": True, "n_features": N_FEATURES},
        "buffers": {"model.idx": channel_index} if channel_index is not None else {},
        "root": str(root),
        "category": category,
        "image_size": IMAGE_SIZE,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "threads": threads,
        "seed": 0,
    }
    command = [python, str(REPO_ROOT / "benchmarks" / "_anomalib.py")] + ([] if with_test else ["--no-test"])
    return run_anomalib_process(command, spec, threads, "padim")


# ----------------------------------------------------------------------------- metrics
def auroc_pair(ours: dict, theirs: dict) -> dict:
    """Both sides' image and pixel AUROC with scikit-learn, against adlearn's ground truth."""
    from sklearn.metrics import roc_auc_score

    def key(path) -> str:  # "<defect>/<file>": how both sides name a test image
        path = Path(str(path))
        return f"{path.parent.name}/{path.name}"

    names = [key(path) for path in ours["image_path"]]
    position = {key(path): i for i, path in enumerate(theirs["image_path"])}
    if sorted(position) != sorted(names):
        sys.exit("the two sides did not see the same test images")
    order = np.array([position[name] for name in names])  # anomalib rows in adlearn's order

    labels = ours["gt_label"].astype(int)
    masks = ours["gt_mask"].astype(bool)
    their_scores = theirs["pred_score"][order]
    their_maps = theirs["anomaly_map"][order]
    result = {
        "adlearn": {
            "image_auroc": float(roc_auc_score(labels, ours["pred_score"])),
            "pixel_auroc": float(roc_auc_score(masks.ravel(), ours["anomaly_map"].ravel())),
        },
        "anomalib": {
            "image_auroc": float(roc_auc_score(labels, their_scores)),
            "pixel_auroc": float(roc_auc_score(masks.ravel(), their_maps.ravel())),
        },
    }
    # how close the two implementations are, image by image
    result["agreement"] = {
        "labels_equal": bool(np.array_equal(labels, theirs["gt_label"][order].astype(int))),
        "mask_pixels_differing": int((masks != theirs["gt_mask"][order].astype(bool)).sum())
        if "gt_mask" in theirs
        else None,
        "score_pearson": float(np.corrcoef(ours["pred_score"], their_scores)[0, 1]),
        "score_max_rel_diff": float(np.max(np.abs(ours["pred_score"] - their_scores) / np.abs(their_scores))),
        "map_max_abs_diff": float(np.max(np.abs(ours["anomaly_map"] - their_maps))),
        "map_mean": float(np.mean(their_maps)),
    }
    return result


# ----------------------------------------------------------------------------- report
def ratio(a: float | None, b: float | None) -> float | None:
    """a / b; None when a part of this run ran on a busy machine (`adlearn.machine`), unless --allow-busy."""
    return None if not a or not b else guarded_ratio(a, b)


def print_table(result: dict) -> None:
    ours, theirs, metrics = result["adlearn"], result["anomalib"], result["auroc"]
    rows = [
        ("setup s (model + weights)", "setup_s"),
        ("fit s", "fit_s"),
        ("predict s (test split)", "predict_s"),
        ("fit+predict s", "fit_predict_s"),
        ("fit+predict CPU s", "fit_predict_cpu_s"),
    ]
    print(
        f"\nPaDiM on {result['data']['kind']}/{result['data']['category']} "
        f"({ours['n_train']} train, {ours['n_test']} test, {IMAGE_SIZE} px), {result['threads']} threads"
    )
    print(f"{'':28s}{'adlearn':>12s}{'anomalib':>12s}{'ratio':>9s}")
    for label, key in rows:
        a, b = ours.get(key), theirs.get(key)
        r = ratio(a, b)
        print(f"{label:28s}{a:12.2f}{b:12.2f}{(f'{r:.2f}' if r else '-'):>9s}")
    for label, key in (("image AUROC (sklearn)", "image_auroc"), ("pixel AUROC (sklearn)", "pixel_auroc")):
        a, b = metrics["adlearn"][key], metrics["anomalib"][key]
        print(f"{label:28s}{a:12.4f}{b:12.4f}{a - b:+9.4f}")
    own = theirs.get("metrics") or {}
    if own:
        print("anomalib's own metrics (Engine.test): " + ", ".join(f"{k} {v:.4f}" for k, v in own.items()))
    phases = theirs.get("fit_phases", {})
    if phases:
        print(
            "anomalib fit phases (wall s): "
            + ", ".join(f"{k} {v['s']:.1f}" for k, v in phases.items())
            + "  (validation includes the Gaussian fit)"
        )
    print("adlearn fit phases (wall s): " + ", ".join(f"{k} {v['s']:.1f}" for k, v in ours["fit_phases"].items()))
    agree = metrics["agreement"]
    print(
        f"agreement: score Pearson {agree['score_pearson']:.5f}, max rel. score diff "
        f"{agree['score_max_rel_diff']:.2e}, max |map diff| {agree['map_max_abs_diff']:.3g} "
        f"(mean map {agree['map_mean']:.3g}); features check equal: {result['same_features']}"
    )
    verdict = result["verdict"]
    if verdict["time_ratio_wall"] is None:
        print("target: time ratio not judged: measured under load (rerun on an idle machine or pass --allow-busy)")
        return
    print(
        f"target: time ratio <= {TARGET_TIME_RATIO} (wall {verdict['time_ratio_wall']:.2f}, "
        f"CPU {verdict['time_ratio_cpu']:.2f}) and |AUROC gap| <= {TARGET_AUROC_GAP} "
        f"-> {'MET' if verdict['met'] else 'NOT MET'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PaDiM: adlearn vs anomalib, side by side")
    parser.add_argument(
        "--data",
        choices=("auto", "bottle", "synthetic"),
        default="auto",
        help="auto: real bottle if --root or ADLEARN_MVTEC_ROOT has it, else synthetic",
    )
    parser.add_argument("--root", help="MVTec-layout root (default: ADLEARN_MVTEC_ROOT / the synthetic cache)")
    parser.add_argument("--category", help="category (default: bottle / ring)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument(
        "--anomalib-own-channels",
        action="store_true",
        help="let anomalib draw its own random channel subset instead of adlearn's",
    )
    parser.add_argument("--no-anomalib-test", action="store_true", help="skip Engine.test (anomalib's own metrics)")
    parser.add_argument("--json", help="write the full result here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    python = anomalib_python(args.anomalib_python)
    guard = guard_from_args(args).activate()

    kind, root, category = resolve_data(args.data, args.root, args.category)
    print(f"data: {kind} {root / category}; adlearn first, then anomalib (subprocess)", flush=True)
    with guard.measure("adlearn"):
        ours, our_arrays, model = run_adlearn(root, category, args.threads, args.batch_size, args.num_workers)
    print(f"adlearn: fit {ours['fit_s']:.1f} s, predict {ours['predict_s']:.1f} s", flush=True)
    channels = None if args.anomalib_own_channels else model.channel_index.tolist()
    with guard.measure("anomalib"):
        theirs, their_arrays = run_anomalib(
            root,
            category,
            args.threads,
            args.batch_size,
            args.num_workers,
            channels,
            python,
            not args.no_anomalib_test,
        )
    print(f"anomalib: fit {theirs['fit_s']:.1f} s, predict {theirs['predict_s']:.1f} s", flush=True)

    metrics = auroc_pair(our_arrays, their_arrays)
    same_features = bool(np.allclose(ours["feature_check"], theirs["feature_check"], rtol=1e-4))
    gap = max(abs(metrics["adlearn"][k] - metrics["anomalib"][k]) for k in ("image_auroc", "pixel_auroc"))
    verdict = {
        "time_ratio_wall": ratio(ours["fit_predict_s"], theirs["fit_predict_s"]),
        "time_ratio_cpu": ratio(ours["fit_predict_cpu_s"], theirs["fit_predict_cpu_s"]),
        "auroc_max_gap": gap,
    }
    verdict["met"] = (
        None
        if verdict["time_ratio_wall"] is None
        else bool(verdict["time_ratio_wall"] <= TARGET_TIME_RATIO and gap <= TARGET_AUROC_GAP)
    )
    result = {
        "benchmark": "padim",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": guard.summary(),  # CPU model, cores, threads, load before/after each side
        "data": {"kind": kind, "root": str(root), "category": category},
        "config": {
            "backbone": BACKBONE,
            "adlearn_layers": ADLEARN_LAYERS,
            "anomalib_layers": ANOMALIB_LAYERS,
            "n_features": N_FEATURES,
            "image_size": IMAGE_SIZE,
            "center_crop": None,
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "same_channels": channels is not None,
        },
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "anomalib": theirs.get("anomalib_version")},
        "adlearn": ours,
        "anomalib": theirs,
        "auroc": metrics,
        "same_features": same_features,
        "verdict": verdict,
    }
    print_table(result)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
