"""EfficientAD's costs on the CPU: predict latency against our PatchCore, training-step and distillation cost.

    .venv/bin/python benchmarks/bench_efficient_ad.py --threads 1 --json build/bench/effad.json

* **latency**: ``model.predict`` on the same (random, ImageNet-normalised) images, batch 1 and batch 16,
  for EfficientAD-S (and ``--medium``) at 256 px and PatchCore (efficientnet_lite0, the ``cpu``
  preset: 256 px, coreset 10 %) fitted on ``--bank-images`` synthetic images. Reported per image as
  CPU seconds of this process (``time.process_time``: robust on a shared machine) and wall seconds,
  median of ``--repeats``.
* **training step**: one EfficientAD step (batch 1) at 256 and 128 px, random teacher (the cost does
  not depend on the weights); **distillation step** (``distill_teacher``'s defaults: batch 8, 128-px crops).
* **CFA**: one training step (batch 8, 256 px, efficientnet_lite0) with its K + J nearest centres.

The figures go to docs/benchmarks.md with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


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


def fitted_efficient_ad(model_size: str, size: int):
    from adlearn.models import create

    model = create("efficient_ad", model_size=model_size, teacher_weights="none", image_size=size, device="cpu")
    model._is_fitted.fill_(True)            # predict's cost does not depend on the weights or statistics
    model.quantiles.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bank-images", type=int, default=40, help="PatchCore training images (synthetic)")
    parser.add_argument("--medium", action="store_true", help="also time EfficientAD-M")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: latency,train,distill,cfa")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
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
