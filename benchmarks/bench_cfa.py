"""CFA side by side with anomalib 2.7: accuracy after the same training, and CPU time per training step.

Run from the repository root with adlearn's venv; anomalib runs in its own venv as subprocesses (this
same file with ``--anomalib-side`` / ``--worker``; that code imports nothing from adlearn and uses the
helpers of ``benchmarks/_anomalib.py``)::

    .venv/bin/python benchmarks/bench_cfa.py --json build/bench/cfa.json                # both parts
    .venv/bin/python benchmarks/bench_cfa.py --speed-only --json build/bench/cfa_speed.json   # ≈ 3 min
    .venv/bin/python benchmarks/bench_cfa.py --accuracy-only --epochs 1 --max-train 16      # a quick check

What is held equal on both sides:

* backbone — ``efficientnet_lite0`` with the packaged offline ImageNet weights, stages ``blocks.1/2/4``
  (strides 4/8/16, 24 + 40 + 112 = 176 channels; adlearn's ``layer1..layer3``). anomalib's CFA builds
  its backbone with torchvision for four named networks only, so the anomalib side replaces
  ``cfa.torch_model.get_feature_extractor`` by anomalib's own ``TimmFeatureExtractor`` on lite0 (weights
  injected by ``_anomalib.install_offline_weights``) and its descriptor by a ``CoordConv2d(176, 176, 1)``
  (the 448 → 448 one it sizes for ``resnet18`` would not fit). The first feature map's sums are compared
  (``feature_check``): equal sums = the same weights;
* CFA's defaults on both sides: γ_c = γ_d = 1 (one centre per position: 64 × 64 = 4096 centres),
  K = 3, J = 3, r = 1e-5, AdamW(lr 1e-3, weight decay 5e-4, amsgrad); images 256 × 256, ImageNet-normalised;
  batches of ``--batch-size`` (8, the ``cpu`` preset); CPU, float32, ``--threads`` threads (1).

Accuracy (``--accuracy-only`` or default): each side trains ``--epochs`` epochs on all the training
images (adlearn: ``val_fraction=0``, so both see the same 209 images; anomalib: ``Engine.fit`` without
validation), seed ``--seed``, then predicts the test split; the image and pixel AUROC of both are
computed here with the same code (`adlearn.metrics`) from the raw scores and maps (anomalib's own
``Engine.test`` figures are kept in the JSON too). The test split is only scored at the end.

Speed (``--speed-only`` or default): one process per side holds a model (bank built from one batch) and
a fixed batch of ``--batch-size`` random 256-px images (the cost of a step does not depend on the
values); after ``--warmup`` steps, turns of ``--steps-per-turn`` steps are interleaved A B B A
(``--rounds`` times); each side reports the process CPU seconds (and wall seconds) of every step and
the figure compared is the median. One step = forward (frozen backbone, descriptor), distances to
the centres, loss, backward, optimizer step — anomalib's ``training_step`` + its ``backward``
(``retain_graph=True``) + AdamW, adlearn's ``Trainer.training_step``. Each turn is measured by
`adlearn.machine.LoadGuard` (CPU used by other processes): a ratio measured under load is not
reported unless ``--allow-busy``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _abba, _anomalib, bench_memory_models
from _common import REPO_ROOT, anomalib_python, clock, mvtec_category, mvtec_root, since, write_json  # noqa: E402

IMAGE_SIZE = 256
BACKBONE, ANOMALIB_LAYERS, CHANNELS = "efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], 176


# ----------------------------------------------------------------------------- adlearn side
def adlearn_model(batch_size: int, epochs: int, seed: int):
    from adlearn.models import create

    return create(
        "cfa",
        backbone=BACKBONE,
        image_size=IMAGE_SIZE,
        batch_size=batch_size,
        max_epochs=epochs,
        val_fraction=0.0,
        device="cpu",
        seed=seed,
    )


def adlearn_feature_check(model) -> list[float]:
    import torch

    images = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return [float(f.double().sum()) for f in model.feature_extractor(images).values()]


def run_adlearn_accuracy(
    root: str, category: str, epochs: int, batch_size: int, threads: int, seed: int, max_train: int | None
) -> tuple[dict, dict]:
    import numpy as np
    import torch

    from adlearn.data import MVTecDataset

    torch.set_num_threads(threads)
    model = adlearn_model(batch_size, epochs, seed)
    train = MVTecDataset(root, category, "train", transform=model.transform)
    if max_train:
        train = torch.utils.data.Subset(train, evenly_spaced(len(train), max_train))
    test = MVTecDataset(root, category, "test", transform=model.transform)
    began = clock()
    model.fit(train, progress=False)
    fit = since(began)
    scores, maps, labels, masks = [], [], [], []
    began = clock()
    for batch in torch.utils.data.DataLoader(test, batch_size=batch_size):
        prediction = model.predict(batch["image"])
        scores.append(prediction.pred_score.numpy())
        maps.append(prediction.anomaly_map.reshape(len(batch["image"]), IMAGE_SIZE, IMAGE_SIZE).numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].reshape(len(batch["image"]), IMAGE_SIZE, IMAGE_SIZE).numpy() > 0.5)
    predict = since(began)
    report = {
        "side": "adlearn",
        "n_train": len(train),
        "n_test": len(test),
        "epochs": epochs,
        "steps": model.history.steps,
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "predict_s": predict[0],
        "predict_cpu_s": predict[1],
        "train_loss_per_epoch": list(model.history.loss),
        "feature_check": adlearn_feature_check(model),
        "threads": torch.get_num_threads(),
    }
    arrays = {
        "pred_score": np.concatenate(scores),
        "anomaly_map": np.concatenate(maps),
        "gt_label": np.concatenate(labels),
        "gt_mask": np.concatenate(masks),
    }
    return report, arrays


def evenly_spaced(n: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``range(n)`` (the same rule as bench_memory_models.training_subset)."""
    step = n / keep
    return sorted({int(i * step) for i in range(min(keep, n))})


# ----------------------------------------------------------------------------- anomalib side
def anomalib_cfa(seed: int):
    """anomalib's Cfa on the offline efficientnet_lite0 (see the module docstring). Runs in anomalib's venv."""
    import _anomalib
    from anomalib.models import Cfa
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.cfa import torch_model
    from lightning.pytorch import seed_everything

    _anomalib.install_offline_weights()

    def lite0_extractor(backbone, return_nodes):
        return TimmFeatureExtractor(BACKBONE, layers=ANOMALIB_LAYERS, pre_trained=True).eval()

    torch_model.get_feature_extractor = lite0_extractor
    torch_model.get_return_nodes = lambda backbone: list(ANOMALIB_LAYERS)  # read by its get_scale
    seed_everything(seed, verbose=False)
    model = Cfa(backbone="resnet18", visualizer=False)  # a name it accepts; the extractor is lite0
    model.model.descriptor.layer = torch_model.CoordConv2d(CHANNELS, CHANNELS, kernel_size=1)
    return model, _anomalib


def run_anomalib_accuracy_side(spec_path: str, out_path: str) -> int:
    """In anomalib's venv: Engine.fit for ``epochs`` epochs (no validation), Engine.predict on the test split."""
    import logging
    import warnings

    import numpy as np
    import torch

    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(spec["threads"])
    model, _anomalib = anomalib_cfa(spec["seed"])
    from anomalib.engine import Engine

    check = _anomalib.feature_check(model.model.feature_extractor, IMAGE_SIZE)
    datamodule = _anomalib.make_datamodule(spec["root"], spec["category"], spec["batch_size"], 0, spec["seed"])
    _, RawOutputs = _anomalib._lightning_callbacks()
    raw = RawOutputs()
    with tempfile.TemporaryDirectory(prefix="anomalib-bench-") as workdir:
        engine = Engine(
            callbacks=[raw],
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
        began = _anomalib.clock()
        engine.fit(model=model, datamodule=datamodule)
        fit = _anomalib.since(began)
        began = _anomalib.clock()
        engine.predict(model=model, dataloaders=datamodule.test_dataloader())
        predict = _anomalib.since(began)
    import anomalib

    report = {
        "side": "anomalib",
        "anomalib_version": anomalib.__version__,
        "n_train": len(datamodule.train_data),
        "n_test": len(datamodule.test_data),
        "epochs": spec["epochs"],
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "predict_s": predict[0],
        "predict_cpu_s": predict[1],
        "feature_check": check,
        "injected_weights": list(_anomalib.INJECTED),
        "threads": torch.get_num_threads(),
    }
    write_json(out_path, report)
    np.savez(Path(out_path).with_suffix(".npz"), **raw.arrays())
    return 0


def run_anomalib_accuracy(
    root: str, category: str, epochs: int, batch_size: int, threads: int, seed: int, python: str
) -> tuple[dict, dict]:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "root": str(root),
                    "category": category,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "threads": threads,
                    "seed": seed,
                }
            )
        )
        completed = subprocess.run(
            [python, __file__, "--anomalib-side", str(spec), str(out)], capture_output=True, text=True, cwd=REPO_ROOT
        )
        if completed.returncode != 0:
            raise RuntimeError(f"anomalib side failed:\n{completed.stderr[-3000:]}")
        with np.load(out.with_suffix(".npz")) as data:
            arrays = {key: data[key] for key in data.files}
        return json.loads(out.read_text()), arrays


def aurocs(arrays: dict) -> dict:
    """Image and pixel AUROC from raw scores and maps, with adlearn's metrics (both sides alike)."""
    from adlearn.metrics import image_auroc, pixel_auroc

    return {
        "image_auroc": image_auroc(arrays["gt_label"], arrays["pred_score"]),
        "pixel_auroc": pixel_auroc(arrays["gt_mask"].astype(bool), arrays["anomaly_map"]),
    }


# ----------------------------------------------------------------------------- speed (benchmarks/_abba.py)
def worker(side: str, spec_json: str) -> int:
    """A persistent process holding one side's model and batch; `_abba.serve` answers the driver."""
    import _abba
    import torch

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    images = torch.randn(spec["batch_size"], 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    if side == "adlearn":
        sys.path.insert(0, str(REPO_ROOT))
        model = adlearn_model(spec["batch_size"], 1, 0)
        trainer = model.trainer(verbose=False)
        trainer.setup()
        model.on_fit_start(images, trainer)  # the bank, from this batch

        def step():
            trainer.training_step({"image": images})
    else:
        from types import SimpleNamespace

        model, _ = anomalib_cfa(0)
        batch = SimpleNamespace(image=images)
        model.model.initialize_centroid(data_loader=[batch])  # the bank, from this batch
        model.train()
        optimizer = model.configure_optimizers()

        def step():
            loss = model.training_step(batch)["loss"]
            model.backward(loss)  # loss.backward(retain_graph=True)
            optimizer.step()
            optimizer.zero_grad()

    return _abba.serve(step, side, spec, {"torch": torch.__version__, "threads": torch.get_num_threads()})


def run_speed(args, guard) -> dict:
    import _abba

    spec = {"batch_size": args.batch_size, "threads": args.threads, "busy_threshold": guard.threshold}
    workers = {
        "adlearn": _abba.Worker(__file__, "adlearn", sys.executable, spec),
        "anomalib": _abba.Worker(__file__, "anomalib", args.anomalib_python, spec),
    }
    return _abba.interleave(workers, guard, args.warmup, args.rounds, args.steps_per_turn)


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="accuracy: MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=3, help="accuracy: training epochs per side (cpu preset: 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None, help="accuracy: keep this many training images")
    parser.add_argument("--warmup", type=int, default=1, help="speed: steps before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="speed: ABBA rounds")
    parser.add_argument("--steps-per-turn", type=int, default=2, help="speed: steps per side per turn")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--speed-only", action="store_true")
    parts.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--anomalib-side", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="report ratios even when other processes loaded the machine (marked as such)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=None,
        help="cores used by other processes above which a part is busy (default 0.5)",
    )
    args = parser.parse_args(argv)
    if args.anomalib_side:
        return run_anomalib_accuracy_side(*args.anomalib_side)
    if args.worker:
        return worker(*args.worker)

    sys.path.insert(0, str(REPO_ROOT))
    from adlearn.machine import LoadGuard, describe

    guard = LoadGuard(allow_busy=args.allow_busy, threshold=args.busy_threshold)
    args.anomalib_python = anomalib_python(args.anomalib_python)
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "image_size": IMAGE_SIZE,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "backbone": f"{BACKBONE} {ANOMALIB_LAYERS}",
    }

    if not args.speed_only:
        args.root = str(mvtec_root(args.root))
        mvtec_category(args.root, args.category)
        root = args.root
        with tempfile.TemporaryDirectory() as tmp:
            if args.max_train:
                from bench_memory_models import training_subset

                root = str(training_subset(Path(args.root), args.category, args.max_train, Path(tmp)))
            with guard.measure("adlearn accuracy"):
                ours, our_arrays = run_adlearn_accuracy(
                    root, args.category, args.epochs, args.batch_size, args.threads, args.seed, None
                )
            with guard.measure("anomalib accuracy"):
                theirs, their_arrays = run_anomalib_accuracy(
                    root, args.category, args.epochs, args.batch_size, args.threads, args.seed, args.anomalib_python
                )
        ours.update(aurocs(our_arrays))
        theirs.update(aurocs(their_arrays))
        same_weights = all(
            abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(ours["feature_check"], theirs["feature_check"])
        )
        out["accuracy"] = {
            "adlearn": ours,
            "anomalib": theirs,
            "same_backbone_features": same_weights,
            "max_train": args.max_train,
        }
        print(
            f"\nCFA, {args.category}, {args.epochs} epoch(s), {ours['n_train']} training images, seed {args.seed}, "
            f"{args.threads} thread(s); backbone features equal on both sides: {same_weights}"
        )
        print(f"{'side':9s} {'image AUROC':>11s} {'pixel AUROC':>11s} {'fit CPU s':>10s} {'predict CPU s':>13s}")
        for row in (ours, theirs):
            print(
                f"{row['side']:9s} {row['image_auroc']:11.4f} {row['pixel_auroc']:11.4f} {row['fit_cpu_s']:10.1f} "
                f"{row['predict_cpu_s']:13.1f}"
            )

    if not args.accuracy_only:
        import _abba

        speed = run_speed(args, guard)
        out["speed"] = speed
        _abba.print_steps(
            f"CFA training step, batch {args.batch_size}, {IMAGE_SIZE} px, {args.threads} thread(s)",
            speed,
            ("adlearn", "anomalib"),
        )
    print(f"\nmachine: {describe()}")
    out["machine"] = guard.summary()
    if args.json:
        write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
