"""STFPM, FastFlow and Reverse Distillation, time per training epoch: adlearn vs anomalib 2.7 on the same data and threads.

Run from the repository root with adlearn's venv; anomalib runs in its own venv as a subprocess
(this same file with ``--anomalib-side``, which imports nothing from adlearn and uses the helpers of
``benchmarks/_anomalib.py``)::

    .venv/bin/python benchmarks/bench_trained_models.py                       # all three models, real bottle
    .venv/bin/python benchmarks/bench_trained_models.py --models stfpm --epochs 3 --json out.json

What is held equal on both sides:

* data — the same MVTec-layout category (real bottle by default: 209 training images), resized to
  256x256, ImageNet-normalized, batches of 32 (7 steps per epoch), shuffled, no loader workers;
* threads — ``torch.set_num_threads(--threads)`` in both processes; CPU only, float32 (no AMP);
* model and optimizer — the reference defaults on both sides (STFPM: SGD lr 0.4, momentum 0.9,
  weight decay 1e-3; FastFlow: 8 flow steps, 3x3/1x1 subnets, hidden ratio 1.0, Adam lr 1e-3,
  weight decay 1e-5);
* weights —
    - STFPM: teacher ``efficientnet_lite0`` with the packaged offline ImageNet weights on both sides
      (injected into anomalib's ``timm.create_model`` by ``_anomalib.install_offline_weights``),
      layers ``blocks.1/2/4`` (adlearn's ``layer1..layer3``); student random on both sides;
    - FastFlow: anomalib's FastFlow only accepts ``resnet18``, ``wide_resnet50_2``, CaiT and DeiT,
      none of which has weights offline, so both sides use ``resnet18`` with **random** weights
      (``pre_trained=False`` / ``pretrained="none"``). The work per epoch does not depend on the
      weights' values, only the metrics would (none are reported here);
    - Reverse Distillation: anomalib builds its de-ResNet decoder for ResNets only, so both sides use a
      ``resnet18`` encoder with random weights (the same architecture: 15.38 M trainable parameters
      on both sides), Adam lr 0.005, betas (0.5, 0.99).

What is timed: one epoch of training = from the first batch being drawn to the last optimizer step
(data loading included, anomalib's validation excluded: ``limit_val_batches=0``). Wall-clock and
process-CPU seconds are both recorded; on a machine shared with other jobs the CPU seconds are the
steadier figure. The first epoch (warm-up: allocator, kernel selection) is reported apart; the
figure compared is the median of the later epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH_DIR, REPO_ROOT, anomalib_python, clock, mvtec_category, mvtec_root, write_json  # noqa: E402

IMAGE_SIZE = 256
BATCH_SIZE = 32

# model -> (adlearn options, anomalib class, anomalib options, what the weights are)
CONFIGS = {
    "stfpm": (
        {"backbone": "efficientnet_lite0", "pretrained": "auto"},
        "Stfpm",
        {"backbone": "efficientnet_lite0", "layers": ["blocks.1", "blocks.2", "blocks.4"]},
        "teacher efficientnet_lite0, packaged ImageNet weights on both sides; student random",
    ),
    "fastflow": (
        {"backbone": "resnet18", "pretrained": "none"},
        "Fastflow",
        {"backbone": "resnet18", "pre_trained": False},
        "resnet18 with random weights on both sides (anomalib's FastFlow takes no efficientnet)",
    ),
    "reverse_distillation": (
        {"backbone": "resnet18", "pretrained": "none"},
        "ReverseDistillation",
        {"backbone": "resnet18", "pre_trained": False},
        "resnet18 encoder with random weights on both sides (anomalib's decoder exists for ResNets only)",
    ),
}


def summarize(epochs: list[dict]) -> dict:
    """First epoch apart; median wall / CPU seconds of the others (all of them if only one)."""
    later = epochs[1:] or epochs
    return {
        "first_epoch_s": epochs[0]["s"],
        "first_epoch_cpu_s": epochs[0]["cpu_s"],
        "epoch_s": statistics.median(e["s"] for e in later),
        "epoch_cpu_s": statistics.median(e["cpu_s"] for e in later),
        "epochs": epochs,
    }


# ----------------------------------------------------------------------------- adlearn side
def test_scores(model, test) -> tuple[float, float | None]:
    """(image AUROC, pixel AUROC or None) of ``model`` on the dataset ``test``, by scikit-learn."""
    from sklearn.metrics import roc_auc_score

    from adlearn.evaluate import collect_predictions

    predictions = collect_predictions(model, test)
    image = roc_auc_score(predictions["labels"], predictions["pred_scores"])
    if predictions["anomaly_maps"] is None:
        return image, None
    return image, roc_auc_score(predictions["masks"].ravel() > 0.5, predictions["anomaly_maps"].ravel())


def run_adlearn(
    model_name: str, root: str, category: str, epochs: int, threads: int, seed: int, test: bool = False
) -> dict:
    import torch

    from adlearn.data import MVTecDataset
    from adlearn.models import create

    torch.set_num_threads(threads)
    options, *_ = CONFIGS[model_name]
    # With --test the batch-norm statistics are scored twice on the same weights: as training leaves them
    # (what anomalib does), then re-estimated (precise_bn, STFPM's default), so precise_bn is off in fit.
    extra = {"precise_bn": False} if test else {}
    model = create(
        model_name,
        image_size=IMAGE_SIZE,
        batch_size=BATCH_SIZE,
        max_epochs=epochs,
        device="cpu",
        seed=seed,
        amp=False,
        **options,
        **extra,
    )
    train = MVTecDataset(root, category, "train", model.transform)
    marks, cpu_per_epoch = [time.process_time()], []

    def cpu_mark(trainer, record):  # CPU seconds between epoch ends (= the epoch: no validation here)
        marks.append(time.process_time())
        cpu_per_epoch.append(marks[-1] - marks[-2])

    model.fit(train, callbacks=[cpu_mark], progress=False)
    rows = [{"s": s, "cpu_s": c} for s, c in zip(model.history.seconds, cpu_per_epoch)]
    result = {
        "side": "adlearn",
        "threads": torch.get_num_threads(),
        "n_train": len(train),
        "steps_per_epoch": model.history.steps // len(rows),
        **summarize(rows),
    }
    if test:

        def scores() -> dict:
            image, pixel = test_scores(model, MVTecDataset(root, category, "test", model.transform))
            return {"image_AUROC": image, "pixel_AUROC": pixel}  # anomalib's metric names

        result["test_bn_as_trained"] = scores()
        model.trainer(precise_bn=True).run_precise_bn(train)  # same weights, statistics re-estimated
        result["test_precise_bn"] = scores()
    return result


# ----------------------------------------------------------------------------- anomalib side
def run_anomalib_side(spec_path: str, out_path: str) -> int:
    """Runs in anomalib's venv: Engine.fit for ``epochs`` epochs, timing each training epoch."""
    import logging
    import warnings

    sys.path.insert(0, str(BENCH_DIR))
    import _anomalib  # the shared helpers: offline weights, datamodule, model building
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything

    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"], verbose=False)
    model = _anomalib.build_model(spec["model"], spec["init"])
    datamodule = _anomalib.make_datamodule(spec["root"], spec["category"], BATCH_SIZE, 0, spec["seed"])

    class EpochTimer(Callback):
        def __init__(self):
            self.rows, self.start, self.last = [], None, None

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = clock()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last = clock()
            self.batches = batch_idx + 1

        def on_train_epoch_end(self, trainer, pl_module):
            self.rows.append({"s": self.last[0] - self.start[0], "cpu_s": self.last[1] - self.start[1]})

    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="anomalib-bench-") as workdir:
        engine = Engine(
            callbacks=[timer],
            accelerator="cpu",
            devices=1,
            logger=False,
            default_root_dir=workdir,
            enable_model_summary=False,
            enable_progress_bar=False,
            max_epochs=spec["epochs"],
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        engine.fit(model=model, datamodule=datamodule)
        metrics = {}
        if spec.get("test"):
            results = engine.test(model=model, datamodule=datamodule, verbose=False)
            metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    import anomalib

    result = {
        "side": "anomalib",
        "anomalib_version": anomalib.__version__,
        "threads": torch.get_num_threads(),
        "n_train": len(datamodule.train_data),
        "steps_per_epoch": timer.batches,
        "injected_weights": list(_anomalib.INJECTED),
        **summarize(timer.rows),
    }
    if spec.get("test"):
        result["test"] = metrics
    write_json(out_path, result)
    return 0


def run_anomalib(
    model_name: str, root: str, category: str, epochs: int, threads: int, seed: int, python: str, test: bool = False
) -> dict:
    _, class_name, init, _ = CONFIGS[model_name]
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "model": class_name,
                    "init": init,
                    "root": str(root),
                    "category": category,
                    "epochs": epochs,
                    "threads": threads,
                    "seed": seed,
                    "test": test,
                }
            )
        )
        completed = subprocess.run(
            [python, __file__, "--anomalib-side", str(spec), str(out)], capture_output=True, text=True, cwd=REPO_ROOT
        )
        if completed.returncode != 0:
            raise RuntimeError(f"anomalib side failed:\n{completed.stderr[-3000:]}")
        return json.loads(out.read_text())


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # adlearn.machine: stdlib only, any venv
    from adlearn.machine import add_arguments, guard_from_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="stfpm,fastflow,reverse_distillation")
    parser.add_argument("--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON; none: adlearn's side only)"
    )
    parser.add_argument(
        "--test",
        action="store_true",
        help="after training, score the test split on both sides (adlearn: batch-norm statistics "
        "as trained and re-estimated)",
    )
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--anomalib-side", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.anomalib_side:
        return run_anomalib_side(*args.anomalib_side)
    guard = guard_from_args(args)

    args.root = str(mvtec_root(args.root))
    mvtec_category(args.root, args.category)
    args.anomalib_python = anomalib_python(args.anomalib_python, required=False)
    have_anomalib = args.anomalib_python is not None
    if not have_anomalib:
        print(
            "no anomalib interpreter (--anomalib-python / ANOMALIB_PYTHON): adlearn side only "
            "(benchmarks/README.md shows how to build the anomalib venv)",
            file=sys.stderr,
        )
    results = []
    for model_name in [m for m in args.models.split(",") if m]:
        row = {
            "model": model_name,
            "weights": CONFIGS[model_name][3],
            "data": f"{args.category} @ {IMAGE_SIZE} px",
            "epochs": args.epochs,
        }
        with guard.measure(f"adlearn {model_name}"):
            row["adlearn"] = run_adlearn(
                model_name, args.root, args.category, args.epochs, args.threads, args.seed, args.test
            )
        if have_anomalib:
            with guard.measure(f"anomalib {model_name}"):
                row["anomalib"] = run_anomalib(
                    model_name,
                    args.root,
                    args.category,
                    args.epochs,
                    args.threads,
                    args.seed,
                    args.anomalib_python,
                    args.test,
                )
        results.append(row)

    print(f"\nseconds per training epoch ({args.threads} threads, CPU; median of epochs 2..{args.epochs})")
    print(f"{'model':9s} {'side':9s} {'steps':>5s} {'wall s':>8s} {'CPU s':>8s} {'1st wall':>9s}")
    for row in results:
        for side in ("adlearn", "anomalib"):
            if side in row:
                r = row[side]
                print(
                    f"{row['model']:9s} {side:9s} {r['steps_per_epoch']:5d} {r['epoch_s']:8.1f} "
                    f"{r['epoch_cpu_s']:8.1f} {r['first_epoch_s']:9.1f}"
                )
        if "anomalib" in row:
            parts = (f"adlearn {row['model']}", f"anomalib {row['model']}")
            wall = guard.ratio(row["adlearn"]["epoch_s"], row["anomalib"]["epoch_s"], *parts)
            cpu = guard.ratio(row["adlearn"]["epoch_cpu_s"], row["anomalib"]["epoch_cpu_s"], *parts)
            row["ratio_wall"], row["ratio_cpu"] = wall, cpu
            print(
                f"{'':9s} ratio adlearn/anomalib: "
                + (
                    f"wall {wall:.2f}, CPU {cpu:.2f}"
                    if wall is not None
                    else "not reported (measured under load; --allow-busy)"
                )
            )
    if args.test:
        print(f"\ntest split after {args.epochs} epochs: image / pixel AUROC")
        for row in results:
            for label, key, side in (
                ("adlearn, statistics as trained", "test_bn_as_trained", "adlearn"),
                ("adlearn, precise_bn", "test_precise_bn", "adlearn"),
                ("anomalib", "test", "anomalib"),
            ):
                metrics = row.get(side, {}).get(key)
                if metrics:
                    print(
                        f"{row['model']:9s} {label:32s} {metrics.get('image_AUROC', float('nan')):.4f} / "
                        f"{metrics.get('pixel_AUROC', float('nan')):.4f}"
                    )
    if args.json:
        import torch

        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": guard.summary(), "torch": torch.__version__}
        write_json(args.json, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
