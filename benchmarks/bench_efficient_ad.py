"""EfficientAD's costs on the CPU: predict latency against our PatchCore, training-step and distillation cost.

    .venv/bin/python benchmarks/bench_efficient_ad.py --threads 1 --json build/bench/effad.json

* **latency**: ``model.predict`` on the same (random, ImageNet-normalised) images, batch 1 and batch 16,
  for EfficientAD-S (and ``--medium``) at 256 px and PatchCore (efficientnet_lite0, the ``cpu``
  preset: 256 px, coreset 10 %) fitted on ``--bank-images`` synthetic images; ``--paper-patchcore``
  adds the PatchCore the paper compares with (WideResNet-50-2, a bank of the bottle's size). Reported per image as
  CPU seconds of this process (``time.process_time``: robust on a shared machine) and wall seconds,
  median of ``--repeats``.
* **training step**: one EfficientAD step (batch 1) at 256 and 128 px, random teacher (the cost does
  not depend on the weights); **distillation step** (``distill_teacher``'s defaults: batch 8, 128-px crops).
* **CFA**: one training step (batch 8, 256 px, efficientnet_lite0) with its K + J nearest centres.
* ``--side-by-side``: one EfficientAD-S training step (batch 1) here and in anomalib 2.7, at 256 px (the
  only size anomalib's autoencoder takes), both PDN teachers holding the same weights (our distilled
  teacher, ``--teacher PATH`` or the cached one; a random PDN when none is cached: the cost does not
  depend on the weights) and their channel statistics set. One process per side, steps interleaved
  A B B A after a warm-up, median CPU seconds per step (`benchmarks/_abba.py`; the load is recorded by
  `adlearn.machine.LoadGuard`). Both steps: teacher on the image and on its colour-changed copy,
  student on the image, on a natural image (penalty) and on the changed copy, autoencoder on the
  changed copy, backward, Adam. anomalib's natural image is a fixed tensor (no ImageNette loading);
  ours is a fresh crop of the installed sample photographs (about 2 ms).

    .venv/bin/python benchmarks/bench_efficient_ad.py --side-by-side --json build/bench/effad_side.json   # ≈ 3 min

* ``--accuracy``: image and pixel AUROC of both libraries after the same number of training steps
  (``--steps``, default 209 = one epoch of the bottle's training images, so that anomalib's per-epoch
  validation — where it computes its map quantiles — runs exactly at the end) at 256 px, seed 0, both
  sides at once (one process each, ``--threads`` each). Both PDN teachers hold our distilled teacher
  (anomalib's ``prepare_pretrained_model`` would download the official weights); anomalib's penalty
  stream reads ``--natural-views`` random views of the installed photographs, written as an
  ImageFolder in place of its Imagenette download. Each side keeps its own recipe otherwise: ours the
  ``cpu`` preset's (map quantiles from 10 % held-out training images, Adam decay at 95 %), anomalib's
  (map quantiles from its validation split, which is the test split by default). AUROC computed by
  adlearn's metrics on both sides' raw outputs. ``--quantiles test`` gives our side anomalib's source
  too (all training images; quantiles of the test split's normal images, which only watch training:
  they never choose the weights), so that the two sides differ only in their code. ``--penalty reference``
  gives our side the reference's penalty images too: drawn from the same folder as anomalib's, with its
  transform (2× resize, grey with p = 0.3, centre crop) — our own stream crops the photographs at random
  scales instead. ``--lr-decay none`` keeps our learning rate constant, as anomalib's is in effect (its
  StepLR is stepped per epoch, so it never reaches the 95 % milestone; ours decays then). ``--sides adlearn``
  runs our side alone (anomalib's is deterministic on the CPU: its figures for a seed do not change from run
  to run). `archive/check_efficient_ad_equivalence.py` shows that the two
  codes compute the same maps, losses, gradients and Adam steps from the same weights and inputs.

    ADLEARN_MVTEC_ROOT=... .venv/bin/python benchmarks/bench_efficient_ad.py --accuracy --json effad_acc.json
    ADLEARN_MVTEC_ROOT=... .venv/bin/python benchmarks/bench_efficient_ad.py --accuracy --quantiles test --seed 1
    ADLEARN_MVTEC_ROOT=... .venv/bin/python benchmarks/bench_efficient_ad.py --accuracy --quantiles test \
        --penalty reference --sides adlearn --seed 1
    ADLEARN_MVTEC_ROOT=... .venv/bin/python benchmarks/bench_efficient_ad.py --accuracy --quantiles test \
        --lr-decay none --sides adlearn --seed 1

The figures go to docs/log/2026-12-06-benchmarks-history.md with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # _common, _abba, _anomalib
from _common import anomalib_python, clock, mvtec_root, since, write_json  # noqa: E402

SIDE_BY_SIDE_SIZE = 256


def timed(function, repeats: int) -> dict:
    """Median CPU and wall seconds of ``function()`` over ``repeats`` runs (after one warm-up)."""
    function()
    cpu, wall = [], []
    for _ in range(repeats):
        began = clock()
        function()
        w, c = since(began)
        cpu.append(c)
        wall.append(w)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}


def latency(model, batch: int, repeats: int, size: int) -> dict:
    images = torch.randn(batch, 3, size, size)
    result = timed(lambda: model.predict(images), repeats)
    row = {"batch": batch, "cpu_s_per_image": result["cpu_s"] / batch, "wall_s_per_image": result["wall_s"] / batch}
    print(
        f"predict {model.name:14s} batch {batch:2d}: {row['cpu_s_per_image'] * 1000:8.1f} ms CPU/image "
        f"({1 / row['cpu_s_per_image']:.1f} img/CPU-s), wall {row['wall_s_per_image'] * 1000:.1f} ms",
        flush=True,
    )
    return row


def paper_patchcore(bank_rows: int):
    """PatchCore as the EfficientAD paper timed it: WideResNet-50-2 layer2+layer3 (1536-d patches, the
    model's defaults) at 256 px and a memory bank of the real bottle's size. No ImageNet weights here:
    random ones and a random bank cost the same (dense convolutions, exact search over every row)."""
    from adlearn.models import create

    model = create("patchcore", pretrained="none", device="cpu", image_size=256)
    features = model.extract_features(torch.randn(1, 3, 256, 256))  # (1, E, h, w): the bank's width
    model.memory_bank = torch.randn(bank_rows, features.shape[1])
    model.mark_fitted()
    print(f"patchcore (wide_resnet50_2, random) bank {bank_rows} x {features.shape[1]}", flush=True)
    return model.eval()


def fitted_efficient_ad(model_size: str, size: int):
    from adlearn.models import create

    model = create("efficient_ad", model_size=model_size, teacher_weights="none", image_size=size, device="cpu")
    model.mark_fitted()  # predict's cost does not depend on the weights or statistics
    model.quantiles.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    return model.eval()


# ----------------------------------------------------------------------------- --side-by-side
def side_by_side_worker(side: str, spec_json: str) -> int:
    """One side's EfficientAD-S and image, stepping on the driver's demand (runs in either venv)."""
    import _abba

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    size, generator = SIDE_BY_SIDE_SIZE, torch.Generator().manual_seed(0)
    unit = torch.rand(4, 3, size, size, generator=generator)  # [0, 1] images
    teacher_state = torch.load(spec["teacher"], map_location="cpu", weights_only=True)
    if side == "adlearn":
        sys.path.insert(0, str(BENCH_DIR.parent))
        from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from adlearn.models import create

        images = (unit - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        model = create("efficient_ad", teacher_weights=spec["teacher"], image_size=size, device="cpu", max_steps=10)
        trainer = model.trainer(verbose=False)
        trainer.setup()
        model.on_fit_start(images, trainer)  # teacher loaded, channel statistics
        batch = {"image": images[:1]}

        def step():
            trainer.training_step(batch)
    else:
        import itertools

        from anomalib.models import EfficientAd

        model = EfficientAd(model_size="small", visualizer=False)
        model.model.teacher.load_state_dict(teacher_state)
        with torch.no_grad():
            features = model.model.teacher(unit)  # its PDN normalises [0, 1] input itself
            model.model.mean_std["mean"].data.copy_(features.mean((0, 2, 3), keepdim=True))
            model.model.mean_std["std"].data.copy_(features.std((0, 2, 3), keepdim=True))
        natural = torch.rand(1, 3, size, size, generator=generator)
        model.imagenet_iterator = itertools.repeat((natural, 0))  # in place of ImageNette (offline)
        model.train()
        optimizer = torch.optim.Adam(
            list(model.model.student.parameters()) + list(model.model.ae.parameters()),
            lr=model.lr,
            weight_decay=model.weight_decay,
        )  # its configure_optimizers' Adam
        from types import SimpleNamespace

        batch = SimpleNamespace(image=unit[:1])
        model.log = lambda *args, **kwargs: None  # no Lightning trainer to log to

        def step():
            loss = model.training_step(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return _abba.serve(step, side, spec, {"torch": torch.__version__, "threads": torch.get_num_threads()})


def side_by_side(args) -> dict:
    import _abba

    sys.path.insert(0, str(BENCH_DIR.parent))
    from adlearn.machine import LoadGuard
    from adlearn.models.efficient_ad import PatchDescriptionNetwork
    from adlearn.models.efficient_ad_teacher import default_teacher_path

    guard = LoadGuard(allow_busy=args.allow_busy, threshold=args.busy_threshold)
    teacher = args.teacher or default_teacher_path("small")
    with tempfile.TemporaryDirectory() as tmp:
        if Path(teacher).is_file():
            weights = f"distilled teacher {Path(teacher).name}"
        else:
            torch.manual_seed(0)
            teacher = Path(tmp) / "random_pdn.pt"
            torch.save(PatchDescriptionNetwork(384, "small").state_dict(), teacher)
            weights = "random PDN (no distilled teacher cached; the cost does not depend on the weights)"
        spec = {"teacher": str(teacher), "threads": args.threads, "busy_threshold": guard.threshold}
        workers = {
            "adlearn": _abba.Worker(__file__, "adlearn", sys.executable, spec),
            "anomalib": _abba.Worker(__file__, "anomalib", args.anomalib_python, spec),
        }
        result = _abba.interleave(workers, guard, args.warmup, args.rounds, args.steps_per_turn)
    _abba.print_steps(
        f"EfficientAD-S training step, batch 1, {SIDE_BY_SIDE_SIZE} px, {args.threads} thread(s)",
        result,
        ("adlearn", "anomalib"),
    )
    result.update(teacher=weights, image_size=SIDE_BY_SIDE_SIZE, machine=guard.summary())
    return result


# ----------------------------------------------------------------------------- --accuracy
class ReferencePenaltyViews:
    """``--penalty reference``: our side's penalty images drawn as the reference draws them, from the folder
    anomalib's side reads — each file resized to 2 × the image size, grey with probability 0.3, centre-cropped
    to the image size (anomalib's ``prepare_imagenette_data``), the files in a new random order each pass
    (its shuffled loader); then ImageNet-normalised, as our networks take their input."""

    def __init__(self, folder: str, size: int, seed: int):
        self.paths = sorted(Path(folder).rglob("*.png"))
        if not self.paths:
            raise FileNotFoundError(f"no PNG views under {folder}")
        self.size, self.order = size, []
        self.generator = torch.Generator().manual_seed(seed)

    def view(self) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF
        from PIL import Image

        from adlearn.data.natural_images import to_grayscale

        if not self.order:
            self.order = torch.randperm(len(self.paths), generator=self.generator).tolist()
        with Image.open(self.paths[self.order.pop()]) as image:
            image = TF.resize(image.convert("RGB"), [2 * self.size, 2 * self.size])
            view = TF.to_dtype(TF.to_image(TF.center_crop(image, [self.size, self.size])), torch.float32, scale=True)
        if float(torch.rand((), generator=self.generator)) < 0.3:
            view = to_grayscale(view[None])[0]
        return view

    def sample(self, batch_size: int = 1) -> torch.Tensor:
        from adlearn.data.transforms import normalize

        return normalize(torch.stack([self.view() for _ in range(batch_size)]))


def match_reference_recipe(model, spec: dict) -> None:
    """Give our model the reference's recipe where ``spec`` asks for it, set once the fit starts (after the
    model's own ``on_fit_start``): ``penalty="reference"`` draws the penalty images as anomalib does
    (`ReferencePenaltyViews`); ``lr_decay="none"`` keeps the learning rate constant, as anomalib's StepLR
    effectively does (stepped once per epoch by Lightning, it never reaches its 95 % milestone)."""
    start = model.on_fit_start

    def on_fit_start(data, trainer):
        start(data, trainer)
        if spec.get("penalty") == "reference":
            model._natural = ReferencePenaltyViews(spec["imagenet_dir"], SIDE_BY_SIDE_SIZE, spec["seed"])
        if spec.get("lr_decay") == "none":
            model._decay_step = math.inf  # the model's LambdaLR reads it at every step

    model.on_fit_start = on_fit_start


def accuracy_adlearn_side(spec: dict, out: Path) -> int:
    """Our EfficientAD-S at 256 px for ``steps`` steps (the ``cpu`` preset's other options), scored on the test split."""
    import numpy as np

    sys.path.insert(0, str(BENCH_DIR.parent))
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import collect_predictions
    from adlearn.models import create

    torch.set_num_threads(spec["threads"])
    from_test = spec["quantiles"] == "test"
    options = {"val_fraction": 0.0} if from_test else {}
    model = create(
        "efficient_ad",
        preset="cpu",
        image_size=SIDE_BY_SIDE_SIZE,
        max_steps=spec["steps"],
        teacher_weights=spec["teacher"],
        seed=spec["seed"],
        device="cpu",
        **options,
    )
    match_reference_recipe(model, spec)
    train = MVTecDataset(spec["root"], spec["category"], "train", transform=model.transform)
    test = MVTecDataset(spec["root"], spec["category"], "test", transform=model.transform)
    # from_test: anomalib's default recipe, all training images and the quantiles of the test split's normal
    # images; the test split is only *watched* (restore_best=False): it never chooses the weights
    validation = {"val_data": test, "restore_best": False} if from_test else {}
    began = clock()
    model.fit(train, progress=False, **validation)
    fit = since(began)
    predictions = collect_predictions(model, test)
    held_out = int(len(train) * model.train_config.val_fraction)  # as adlearn.data.hold_out
    report = {
        "side": "adlearn",
        "steps": model.history.steps,
        "n_train": len(train) - held_out,
        "n_test": len(test),
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "threads": torch.get_num_threads(),
        "map_normalisation": "quantiles of the test split's normal images (as anomalib)"
        if from_test
        else "quantiles of held-out training images (val_fraction 0.1 of the cpu preset)",
    }
    write_json(out, report, indent=1)
    np.savez(
        out.with_suffix(".npz"),
        pred_score=predictions["pred_scores"],
        anomaly_map=predictions["anomaly_maps"],
        gt_label=predictions["labels"],
        gt_mask=predictions["masks"] > 0.5,
    )
    return 0


def accuracy_anomalib_side(spec: dict, out: Path) -> int:
    """In anomalib's venv: its EfficientAd (small) trained by ``Engine.fit`` for ``steps`` steps, our teacher
    in its PDN (its ``prepare_pretrained_model`` would download the official one), our natural-image
    views as its ImageNette folder (it would download Imagenette), then ``Engine.predict`` on the test split."""
    import logging
    import warnings

    import _anomalib
    import numpy as np
    from anomalib.engine import Engine
    from anomalib.models import EfficientAd
    from lightning.pytorch import seed_everything

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"], verbose=False)
    model = EfficientAd(model_size="small", imagenet_dir=spec["imagenet_dir"], visualizer=False)
    teacher_state = torch.load(spec["teacher"], map_location="cpu", weights_only=True)
    model.prepare_pretrained_model = lambda: model.model.teacher.load_state_dict(teacher_state)
    datamodule = _anomalib.make_datamodule(spec["root"], spec["category"], 1, 0, spec["seed"])
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
            max_steps=spec["steps"],
            max_epochs=-1,
        )
        began = _anomalib.clock()
        engine.fit(model=model, datamodule=datamodule)
        fit = _anomalib.since(began)
        engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    import anomalib

    report = {
        "side": "anomalib",
        "anomalib_version": anomalib.__version__,
        "steps": int(engine.trainer.global_step),
        "n_train": len(datamodule.train_data),
        "n_test": len(datamodule.test_data),
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "threads": torch.get_num_threads(),
        "map_normalisation": "quantiles of its validation split (anomalib's default: the test images)",
    }
    write_json(out, report, indent=1)
    np.savez(out.with_suffix(".npz"), **raw.arrays())
    return 0


def write_natural_image_folder(folder: Path, count: int, size: int) -> None:
    """``count`` random views of the installed photographs (``NaturalImageCrops``, seed 1) as PNGs in
    ImageFolder layout (``folder/natural/*.png``): anomalib's penalty stream reads them in place of Imagenette."""
    from PIL import Image

    sys.path.insert(0, str(BENCH_DIR.parent))
    from adlearn.data import NaturalImageCrops

    (folder / "natural").mkdir(parents=True, exist_ok=True)
    crops = NaturalImageCrops(size, seed=1, normalize=False)
    for index in range(count):
        array = (crops.view().permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(array).save(folder / "natural" / f"{index:04d}.png")


def accuracy(args) -> dict:
    """Both sides at once (one process each, ``--threads`` each) at 256 px for ``--steps`` steps."""
    sys.path.insert(0, str(BENCH_DIR.parent))
    from adlearn.models.efficient_ad_teacher import default_teacher_path

    teacher = Path(args.teacher or default_teacher_path("small"))
    if not teacher.is_file():
        raise SystemExit(f"no distilled teacher at {teacher}: run distill_teacher('small') first (≈ 37 CPU-min)")
    root = mvtec_root(args.root)
    with tempfile.TemporaryDirectory(prefix="effad-accuracy-") as tmp:  # the natural views: ≈ 150 MB
        return accuracy_in(Path(tmp), args, teacher, root)


def accuracy_in(work: Path, args, teacher: Path, root: str) -> dict:
    """`accuracy`'s run inside the scratch folder ``work`` (spec, natural views, each side's report and arrays)."""
    import subprocess

    import numpy as np
    from bench_cfa import aurocs

    from adlearn.machine import machine_info

    write_natural_image_folder(work / "imagenette", args.natural_views, 2 * SIDE_BY_SIDE_SIZE)
    spec = {
        "root": str(root),
        "category": args.category,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "teacher": str(teacher),
        "imagenet_dir": str(work / "imagenette"),
        "quantiles": args.quantiles,
        "penalty": args.penalty,
        "lr_decay": args.lr_decay,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    pythons = {"adlearn": sys.executable, "anomalib": args.anomalib_python}
    sides = {side: pythons[side] for side in pythons if side in args.sides.split(",")}
    running = {
        side: subprocess.Popen(
            [python, __file__, "--accuracy-side", side, str(work / "spec.json"), str(work / f"{side}.json")],
            cwd=BENCH_DIR.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for side, python in sides.items()
    }
    result = {
        "steps": args.steps,
        "image_size": SIDE_BY_SIDE_SIZE,
        "seed": args.seed,
        "teacher": teacher.name,
        "quantiles": args.quantiles,
        "penalty": args.penalty,
        "lr_decay": args.lr_decay,
        "machine": machine_info(),
    }
    for side, process in running.items():
        log = process.communicate()[0]
        if process.returncode:
            raise RuntimeError(f"{side} side failed:\n{log[-3000:]}")
        report = json.loads((work / f"{side}.json").read_text())
        with np.load(work / f"{side}.npz") as data:
            arrays = {key: data[key] for key in data.files}
        report.update(aurocs(arrays))
        result[side] = report
        print(
            f"{side:9s} steps {report['steps']:5d}  image AUROC {report['image_auroc']:.3f}  pixel AUROC "
            f"{report['pixel_auroc']:.3f}  fit {report['fit_cpu_s']:.0f} CPU-s",
            flush=True,
        )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bank-images", type=int, default=40, help="PatchCore training images (synthetic)")
    parser.add_argument("--medium", action="store_true", help="also time EfficientAD-M")
    parser.add_argument(
        "--paper-patchcore",
        action="store_true",
        help="also time the paper's PatchCore: wide_resnet50_2 (random weights) with a bank of --bank-rows",
    )
    parser.add_argument(
        "--bank-rows",
        type=int,
        default=21_000,
        help="--paper-patchcore's bank (default 21,000 ≈ 10 %% of the bottle's 209 × 32² patches)",
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: latency,train,distill,cfa")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--side-by-side", action="store_true", help="only: one training step here and in anomalib 2.7, interleaved ABBA"
    )
    parser.add_argument("--teacher", help="--side-by-side: PDN weights for both teachers (default: the cached one)")
    parser.add_argument("--warmup", type=int, default=1, help="--side-by-side: steps before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="--side-by-side: ABBA rounds")
    parser.add_argument("--steps-per-turn", type=int, default=2, help="--side-by-side: steps per side per turn")
    parser.add_argument(
        "--anomalib-python", help="--side-by-side, --accuracy: anomalib's venv python (default: $ANOMALIB_PYTHON)"
    )
    parser.add_argument("--allow-busy", action="store_true", help="--side-by-side: report ratios under load")
    parser.add_argument("--busy-threshold", type=float, default=None)
    parser.add_argument(
        "--accuracy",
        action="store_true",
        help="image/pixel AUROC of both libraries after --steps steps at 256 px on --root/--category",
    )
    parser.add_argument("--steps", type=int, default=209, help="--accuracy: training steps (209 = one bottle epoch)")
    parser.add_argument("--root", help="--accuracy: MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quantiles",
        choices=("held-out", "test"),
        default="held-out",
        help="--accuracy: where our side takes its map quantiles: held-out training images (the cpu "
        "preset's recipe, trains on 90 %%) or, as anomalib by default, the test split's normal "
        "images (trains on all)",
    )
    parser.add_argument(
        "--penalty",
        choices=("crops", "reference"),
        default="crops",
        help="--accuracy: our side's penalty images: our natural-image crops (the model's own stream) or "
        "the reference's draw from the views written for anomalib (2x resize, grey p=0.3, centre "
        "crop), so that both sides see the same penalty images",
    )
    parser.add_argument(
        "--lr-decay",
        choices=("paper", "none"),
        default="paper",
        help="--accuracy: our side's learning rate: x 0.1 after 95 %% of the steps (the paper's, our "
        "model's) or constant (what anomalib's per-epoch StepLR amounts to within --steps)",
    )
    parser.add_argument(
        "--sides",
        default="adlearn,anomalib",
        help="--accuracy: the sides to run (anomalib's side is deterministic on the CPU: a seed run once "
        "need not be run again)",
    )
    parser.add_argument(
        "--natural-views",
        type=int,
        default=400,
        help="--accuracy: natural-image views written for anomalib's penalty stream",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-side", nargs=3, metavar=("SIDE", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return side_by_side_worker(*args.worker)
    if args.accuracy_side:
        side, spec, out = args.accuracy_side
        run_side = accuracy_adlearn_side if side == "adlearn" else accuracy_anomalib_side
        return run_side(json.loads(Path(spec).read_text()), Path(out))
    for mode, run in (("accuracy", accuracy), ("side_by_side", side_by_side)):
        if getattr(args, mode):
            if mode == "side_by_side" or "anomalib" in args.sides.split(","):
                args.anomalib_python = anomalib_python(args.anomalib_python)
            result = run(args)
            if args.json:
                write_json(args.json, {mode: result}, indent=1)
            return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"threads": args.threads, "torch": torch.__version__}

    if "latency" not in skip:
        from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset, synthetic_root
        from adlearn.models import create

        patchcore = create("patchcore", preset="cpu", device="cpu")
        train = MVTecDataset(
            synthetic_root(image_size=256), SYNTHETIC_CATEGORIES[0], "train", transform=patchcore.transform
        )
        train = torch.utils.data.Subset(train, range(min(args.bank_images, len(train))))
        patchcore.fit(train)
        print(
            f"patchcore fitted on {len(train)} images: bank {patchcore.memory_bank.shape[0]} x "
            f"{patchcore.memory_bank.shape[1]}",
            flush=True,
        )
        size = patchcore.input_size[0]
        rows = {"patchcore": [latency(patchcore, b, args.repeats, size) for b in (1, 16)]}
        if args.paper_patchcore:
            rows["patchcore_wrn50"] = [latency(paper_patchcore(args.bank_rows), b, args.repeats, 256) for b in (1, 16)]
            out["patchcore_wrn50_bank"] = args.bank_rows
        for model_size in ("small", "medium") if args.medium else ("small",):
            model = fitted_efficient_ad(model_size, 256)
            rows[f"efficient_ad_{model_size}"] = [latency(model, b, args.repeats, 256) for b in (1, 16)]
        out["latency"] = rows
        out["patchcore_input"] = size
        out["patchcore_bank"] = int(patchcore.memory_bank.shape[0])

    if "train" not in skip:
        from adlearn.models import create

        steps = {}
        for size in (256, 128):
            model = create("efficient_ad", teacher_weights="none", image_size=size, device="cpu", max_steps=10)
            trainer = model.trainer(verbose=False)
            images = torch.randn(4, 3, size, size)
            trainer.setup()
            model.on_fit_start(images, trainer)
            batch = {"image": images[:1]}
            steps[size] = timed(lambda: trainer.training_step(batch), args.repeats)  # noqa: B023 (called here, in this iteration)
            print(
                f"efficient_ad training step (batch 1, {size} px): {steps[size]['cpu_s']:.2f} CPU-s, wall "
                f"{steps[size]['wall_s']:.2f} s",
                flush=True,
            )
        out["efficient_ad_step"] = steps

    if "distill" not in skip:
        from adlearn.data import NaturalImageCrops
        from adlearn.models.efficient_ad import PatchDescriptionNetwork
        from adlearn.models.efficient_ad_teacher import distillation_target

        teacher = PatchDescriptionNetwork(384, "small")
        target = distillation_target(crop_size=128)
        optimizer = torch.optim.Adam(teacher.parameters(), lr=5e-4)
        crops = NaturalImageCrops(128, seed=0)

        def distill_step():
            batch = crops.sample(8)
            loss = (teacher(batch) - target(batch)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        out["distill_step"] = timed(distill_step, args.repeats)
        print(
            f"distillation step (batch 8, 128-px crops): {out['distill_step']['cpu_s']:.2f} CPU-s "
            f"(x 3000 default steps = {out['distill_step']['cpu_s'] * 3000 / 60:.0f} CPU-min)",
            flush=True,
        )

    if "cfa" not in skip:
        from adlearn.models import create

        model = create("cfa", preset="cpu", device="cpu", max_steps=10)
        trainer = model.trainer(verbose=False)
        images = torch.randn(8, 3, 256, 256)
        trainer.setup()
        model.on_fit_start(images, trainer)
        out["cfa_step"] = timed(lambda: trainer.training_step({"image": images}), args.repeats)
        print(f"cfa training step (batch 8, 256 px): {out['cfa_step']['cpu_s']:.2f} CPU-s", flush=True)

    if args.json:
        write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
