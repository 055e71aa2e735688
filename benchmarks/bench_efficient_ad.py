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

The figures go to docs/benchmarks.md with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))          # _abba, _anomalib
ANOMALIB_PYTHON = os.environ.get("ANOMALIB_PYTHON", "/work/venvs/anomalib/bin/python")
SIDE_BY_SIDE_SIZE = 256


def timed(function, repeats: int) -> dict:
    """Median CPU and wall seconds of ``function()`` over ``repeats`` runs (after one warm-up)."""
    function()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        function()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}


def latency(model, batch: int, repeats: int, size: int) -> dict:
    images = torch.randn(batch, 3, size, size)
    result = timed(lambda: model.predict(images), repeats)
    row = {"batch": batch, "cpu_s_per_image": result["cpu_s"] / batch, "wall_s_per_image": result["wall_s"] / batch}
    print(f"predict {model.name:14s} batch {batch:2d}: {row['cpu_s_per_image'] * 1000:8.1f} ms CPU/image "
          f"({1 / row['cpu_s_per_image']:.1f} img/CPU-s), wall {row['wall_s_per_image'] * 1000:.1f} ms", flush=True)
    return row


def paper_patchcore(bank_rows: int):
    """PatchCore as the EfficientAD paper timed it: WideResNet-50-2 layer2+layer3 (1536-d patches, the
    model's defaults) at 256 px and a memory bank of the real bottle's size. No ImageNet weights here:
    random ones and a random bank cost the same (dense convolutions, exact search over every row)."""
    from adlearn.models import create

    model = create("patchcore", pretrained="none", device="cpu", image_size=256)
    features = model.extract_features(torch.randn(1, 3, 256, 256))        # (1, E, h, w): the bank's width
    model.memory_bank = torch.randn(bank_rows, features.shape[1])
    model._is_fitted.fill_(True)
    print(f"patchcore (wide_resnet50_2, random) bank {bank_rows} x {features.shape[1]}", flush=True)
    return model.eval()


def fitted_efficient_ad(model_size: str, size: int):
    from adlearn.models import create

    model = create("efficient_ad", model_size=model_size, teacher_weights="none", image_size=size, device="cpu")
    model._is_fitted.fill_(True)            # predict's cost does not depend on the weights or statistics
    model.quantiles.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    return model.eval()


# ----------------------------------------------------------------------------- --side-by-side
def side_by_side_worker(side: str, spec_json: str) -> int:
    """One side's EfficientAD-S and image, stepping on the driver's demand (runs in either venv)."""
    import _abba

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    size, generator = SIDE_BY_SIDE_SIZE, torch.Generator().manual_seed(0)
    unit = torch.rand(4, 3, size, size, generator=generator)          # [0, 1] images
    teacher_state = torch.load(spec["teacher"], map_location="cpu", weights_only=True)
    if side == "adlearn":
        sys.path.insert(0, str(BENCH_DIR.parent))
        from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from adlearn.models import create

        images = (unit - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        model = create("efficient_ad", teacher_weights=spec["teacher"], image_size=size, device="cpu", max_steps=10)
        trainer = model.trainer(verbose=False)
        trainer.setup()
        model.on_fit_start(images, trainer)                            # teacher loaded, channel statistics
        batch = {"image": images[:1]}

        def step():
            trainer.training_step(batch)
    else:
        import itertools

        from anomalib.models import EfficientAd

        model = EfficientAd(model_size="small", visualizer=False)
        model.model.teacher.load_state_dict(teacher_state)
        with torch.no_grad():
            features = model.model.teacher(unit)                       # its PDN normalises [0, 1] input itself
            model.model.mean_std["mean"].data.copy_(features.mean((0, 2, 3), keepdim=True))
            model.model.mean_std["std"].data.copy_(features.std((0, 2, 3), keepdim=True))
        natural = torch.rand(1, 3, size, size, generator=generator)
        model.imagenet_iterator = itertools.repeat((natural, 0))       # in place of ImageNette (offline)
        model.train()
        optimizer = torch.optim.Adam(list(model.model.student.parameters()) + list(model.model.ae.parameters()),
                                     lr=model.lr, weight_decay=model.weight_decay)   # its configure_optimizers' Adam
        from types import SimpleNamespace

        batch = SimpleNamespace(image=unit[:1])
        model.log = lambda *args, **kwargs: None                       # no Lightning trainer to log to

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
        workers = {"adlearn": _abba.Worker(__file__, "adlearn", sys.executable, spec),
                   "anomalib": _abba.Worker(__file__, "anomalib", args.anomalib_python, spec)}
        result = _abba.interleave(workers, guard, args.warmup, args.rounds, args.steps_per_turn)
    _abba.print_steps(f"EfficientAD-S training step, batch 1, {SIDE_BY_SIDE_SIZE} px, {args.threads} thread(s)",
                      result, ("adlearn", "anomalib"))
    result.update(teacher=weights, image_size=SIDE_BY_SIDE_SIZE, machine=guard.summary())
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bank-images", type=int, default=40, help="PatchCore training images (synthetic)")
    parser.add_argument("--medium", action="store_true", help="also time EfficientAD-M")
    parser.add_argument("--paper-patchcore", action="store_true",
                        help="also time the paper's PatchCore: wide_resnet50_2 (random weights) with a bank of --bank-rows")
    parser.add_argument("--bank-rows", type=int, default=21_000,
                        help="--paper-patchcore's bank (default 21,000 ≈ 10 %% of the bottle's 209 × 32² patches)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: latency,train,distill,cfa")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--side-by-side", action="store_true",
                        help="only: one training step here and in anomalib 2.7, interleaved ABBA")
    parser.add_argument("--teacher", help="--side-by-side: PDN weights for both teachers (default: the cached one)")
    parser.add_argument("--warmup", type=int, default=1, help="--side-by-side: steps before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="--side-by-side: ABBA rounds")
    parser.add_argument("--steps-per-turn", type=int, default=2, help="--side-by-side: steps per side per turn")
    parser.add_argument("--anomalib-python", default=ANOMALIB_PYTHON)
    parser.add_argument("--allow-busy", action="store_true", help="--side-by-side: report ratios under load")
    parser.add_argument("--busy-threshold", type=float, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return side_by_side_worker(*args.worker)
    if args.side_by_side:
        result = side_by_side(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"side_by_side": result}, indent=1))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"threads": args.threads, "torch": torch.__version__}

    if "latency" not in skip:
        from adlearn.data import MVTecDataset, SYNTHETIC_CATEGORIES, synthetic_root
        from adlearn.models import create

        patchcore = create("patchcore", preset="cpu", device="cpu")
        train = MVTecDataset(synthetic_root(image_size=256), SYNTHETIC_CATEGORIES[0], "train", transform=patchcore.transform)
        train = torch.utils.data.Subset(train, range(min(args.bank_images, len(train))))
        patchcore.fit(train)
        print(f"patchcore fitted on {len(train)} images: bank {patchcore.memory_bank.shape[0]} x "
              f"{patchcore.memory_bank.shape[1]}", flush=True)
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
            steps[size] = timed(lambda: trainer.training_step(batch), args.repeats)
            print(f"efficient_ad training step (batch 1, {size} px): {steps[size]['cpu_s']:.2f} CPU-s, wall "
                  f"{steps[size]['wall_s']:.2f} s", flush=True)
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
        print(f"distillation step (batch 8, 128-px crops): {out['distill_step']['cpu_s']:.2f} CPU-s "
              f"(x 3000 default steps = {out['distill_step']['cpu_s'] * 3000 / 60:.0f} CPU-min)", flush=True)

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
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
