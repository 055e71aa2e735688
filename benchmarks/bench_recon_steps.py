"""DRAEM and GANomaly: CPU time of one training step here and in anomalib 2.7, at the same network size.

Run from the repository root with adlearn's venv (anomalib runs in its own venv, as worker processes of
this same file; that code imports nothing from adlearn)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recon_steps.py --json build/bench/recon_steps.json
    .venv/bin/python benchmarks/bench_recon_steps.py --models ganomaly --rounds 1 --allow-busy   # a quick check

One step = each implementation's own training step on a fixed batch — for DRAEM: simulate anomalies,
forward both sub-networks, losses (L2 + SSIM + focal), backward, one Adam step; for GANomaly: generator
and discriminator forward, generator loss, backward, generator Adam step, discriminator on the detached
reconstruction, its loss, backward, discriminator Adam step. Our side runs ``Trainer.training_step``
(what ``fit`` runs per batch); anomalib's runs its ``LightningModule.training_step`` outside a Lightning
``Trainer`` (its logging switched off, its own ``configure_optimizers``' Adam stepped as Lightning does:
``zero_grad``, ``backward``, ``step``; for GANomaly its manual optimization is wired to the two Adams).

What is held equal:

* **DRAEM** — anomalib's ``DraemModel`` has fixed widths (reconstructive sub-network 128, discriminative
  64: the paper's), so ours is built with ``reconstruction_width=128, discrimination_width=64``; images
  ``--draem-size`` px (default 64, the smallest side the U-Net takes, so that the default run fits in
  a few minutes: a step costs about 12 CPU s at 64 px and four times that at 128 px, the ``cpu``
  preset's size — ``--draem-size 128 --rounds 1`` for that), a batch of 8; the first 8 real training images of
  ``--category`` (resized once here, bilinear, and handed to both sides as the same [0, 1] tensor; ours
  ImageNet-normalises it, as its data pipeline does, anomalib's DRAEM takes [0, 1] images). The anomaly
  source of both augmenters is the same local folder: the scikit-image photos (``skimage_textures``)
  written to a temporary folder, passed to anomalib as ``Draem(dtd_dir=FOLDER)`` (an existing folder:
  nothing is downloaded, anomalib runs offline) and to ours as ``anomaly_source=FOLDER``. Each side
  draws its own anomalies every step (both: half of the images, β ∈ (0.1, 1)); their cost is also
  timed alone (``simulation``, the median of a few calls in each worker before the turns start).
* **GANomaly** — the ``cpu`` preset's network on both sides: 64 px, ``n_features`` 32, latent 100, no
  extra layers, a batch of 32 real training images (ImageNet-normalised, as anomalib's pre-processor
  and ours give them), two Adam optimizers (lr 2e-4, betas (0.5, 0.999)). The losses differ on purpose
  (``adlearn/models/ganomaly.py``, differences (a)–(b)); their cost is a few element-wise operations.
* one torch thread each side (``--threads``), CPU, float32, seed 0.

Timing (``benchmarks/_abba.py``): one persistent process per side and per model; after ``--warmup``
steps, turns of ``--steps-per-turn`` steps alternate A B B A (then B A A B ...) for ``--rounds``
rounds; every step's process CPU seconds are recorded and the figure compared is the median. Each turn
is measured by `adlearn.machine.LoadGuard`: a ratio measured while other processes used the CPU is not
reported unless ``--allow-busy``. The defaults (DRAEM at 64 px: 1 warm-up step, 2 rounds of 1 step per
turn — 4 measured steps per side; GANomaly: 2 warm-up steps, 2 rounds of 3 steps — 12 per side) take
about 4 minutes on an idle machine, most of it DRAEM's 10 steps; ``--models draem --draem-size 128
--rounds 1`` about 6 minutes (340 CPU s measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

BENCH_DIR = Path(__file__).resolve().parent
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
sys.path.insert(0, str(BENCH_DIR))  # _common, _abba
from _common import REPO_ROOT, anomalib_python, clock, mvtec_category, mvtec_root, since, write_json  # noqa: E402

#: The network of each comparison (anomalib's DRAEM widths are fixed by its code) and the default protocol.
MODELS = {
    "draem": {
        "batch_size": 8,
        "reconstruction_width": 128,
        "discrimination_width": 64,
        "warmup": 1,
        "rounds": 2,
        "steps_per_turn": 1,
    },
    "ganomaly": {
        "batch_size": 32,
        "image_size": 64,
        "n_features": 32,
        "latent_size": 100,
        "warmup": 2,
        "rounds": 2,
        "steps_per_turn": 3,
    },
}
SIMULATION_CALLS = 9


# ----------------------------------------------------------------------------- adlearn side
def adlearn_step(spec: dict):
    """``(step, simulate)`` for our model of ``spec["model"]`` on the batch of ``spec["images"]``.

    ``step()`` runs one ``Trainer.training_step``; ``simulate()`` DRAEM's anomaly simulation alone (None
    for GANomaly). Runs in adlearn's venv; ``spec`` may shrink the network (the tests do).
    """
    import torch

    from adlearn.data.transforms import normalize
    from adlearn.models import create

    images = normalize(torch.load(spec["images"], weights_only=True))  # (B, 3, S, S), as the data pipeline gives
    size, batch = images.shape[-1], {"image": images}
    if spec["model"] == "draem":
        model = create(
            "draem",
            reconstruction_width=spec["reconstruction_width"],
            discrimination_width=spec["discrimination_width"],
            anomaly_source=spec["textures"],
            image_size=size,
            batch_size=len(images),
            device="cpu",
            seed=0,
            max_epochs=700,
        )
    else:
        model = create(
            "ganomaly",
            n_features=spec["n_features"],
            latent_size=spec["latent_size"],
            image_size=size,
            batch_size=len(images),
            device="cpu",
            seed=0,
        )
    trainer = model.trainer(verbose=False)
    trainer.setup()
    if hasattr(model, "on_fit_start"):
        model.on_fit_start(images, trainer)  # DRAEM: its augmenter seeded, as fit does

    def step():
        trainer.training_step(batch)

    simulate = (lambda: model.simulate(images)) if spec["model"] == "draem" else None
    return step, simulate, model, trainer


# ----------------------------------------------------------------------------- anomalib side
def anomalib_step(spec: dict):
    """``(step, simulate)`` for anomalib 2.7's model, stepped as Lightning would. Runs in anomalib's venv."""
    import torch

    images = torch.load(spec["images"], weights_only=True)  # (B, 3, S, S) in [0, 1]
    size = tuple(images.shape[-2:])
    torch.manual_seed(0)
    no_log = lambda *args, **kwargs: None  # noqa: E731  no Lightning trainer to log to
    if spec["model"] == "draem":
        from anomalib.models import Draem

        model = Draem(dtd_dir=spec["textures"], pre_processor=Draem.configure_pre_processor(size), visualizer=False)
        model.log = no_log
        model.train()
        optimizers, _ = model.configure_optimizers()  # [Adam(lr 1e-4)], [MultiStepLR] (per epoch)
        optimizer = optimizers[0]
        batch = SimpleNamespace(image=images)  # its pre-processor: resize only

        def step():
            loss = model.training_step(batch)["loss"]  # augmenter, DraemModel, DraemLoss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def simulate():
            return model.augmenter(images)
    else:
        from anomalib.models import Ganomaly

        model = Ganomaly(
            batch_size=len(images),
            n_features=spec["n_features"],
            latent_vec_size=spec["latent_size"],
            pre_processor=Ganomaly.configure_pre_processor(size),
            visualizer=False,
        )
        model.log_dict = no_log
        model.train()
        d_opt, g_opt = model.configure_optimizers()
        model.optimizers = lambda: (d_opt, g_opt)  # what Lightning hands its manual step
        model.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        batch = SimpleNamespace(image=(images - mean) / std)  # its pre-processor: resize + normalise

        def step():
            model.training_step(batch, 0)  # both losses, both Adam steps

        simulate = None
    return step, simulate


# ----------------------------------------------------------------------------- worker (either venv)
def worker(side: str, spec_json: str) -> int:
    """A persistent process holding one side's model and batch; `_abba.serve` answers the driver."""
    import statistics

    import _abba
    import torch

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    if side == "adlearn":
        sys.path.insert(0, str(REPO_ROOT))
        step, simulate, *_ = adlearn_step(spec)
        version = "adlearn"
    else:
        import anomalib

        step, simulate = anomalib_step(spec)
        version = f"anomalib {anomalib.__version__}"
    info = {"version": version, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if simulate is not None:  # the anomaly simulation alone, timed before the turns start
        import warnings

        machine = _abba.machine_module()
        warnings.filterwarnings("ignore", category=machine.BusyMachineWarning)  # the driver judges and reports
        guard = machine.LoadGuard(echo=False, threshold=spec.get("busy_threshold"))
        simulate()
        cpu = []
        with guard.measure(f"{side} simulation") as record:
            for _ in range(SIMULATION_CALLS):
                began = clock()
                simulate()
                cpu.append(since(began)[1])
        info["simulation"] = {"median_cpu_s": statistics.median(cpu), "cpu_s": cpu, "record": record}
    return _abba.serve(step, side, spec, info)


# ----------------------------------------------------------------------------- driver
def training_images(root: Path, category: str, count: int, size: int, out: Path) -> Path:
    """The first ``count`` training images (sorted names), resized to ``size`` (bilinear), as one [0, 1] tensor."""
    import numpy as np
    import torch
    from PIL import Image

    files = sorted((root / category / "train" / "good").glob("*.png"))[:count]
    if len(files) < count:
        sys.exit(f"need {count} training images under {root / category / 'train' / 'good'}, found {len(files)}")
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255  # (B, 3, S, S)
    torch.save(images.contiguous(), out)
    return out


def run_model(name: str, args, guard, tmp: Path) -> dict:
    import _abba

    config = dict(MODELS[name])
    size = args.draem_size if name == "draem" else config["image_size"]
    protocol = {key: config.pop(key) for key in ("warmup", "rounds", "steps_per_turn")}
    protocol.update({key: getattr(args, key) for key in protocol if getattr(args, key) is not None})
    spec = {
        "model": name,
        **config,
        "threads": args.threads,
        "busy_threshold": guard.threshold,
        "images": str(
            training_images(Path(args.root), args.category, config["batch_size"], size, tmp / f"{name}_images.pt")
        ),
    }
    if name == "draem":
        from adlearn.data import skimage_textures

        spec["textures"] = str(skimage_textures(tmp / "textures"))
    workers = {
        "adlearn": _abba.Worker(__file__, "adlearn", sys.executable, spec),
        "anomalib": _abba.Worker(__file__, "anomalib", args.anomalib_python, spec),
    }
    began, first_record = clock(), len(guard.records)
    result = _abba.interleave(workers, guard, protocol["warmup"], protocol["rounds"], protocol["steps_per_turn"])
    result["seconds"] = since(began)[0]
    result["busy"] = any(record.get("busy") for record in guard.records[first_record:])  # any turn under load
    for side in ("adlearn", "anomalib"):
        simulation = result[side]["info"].get("simulation")
        if simulation:
            guard.judge(simulation["record"])
            guard.records.append(simulation["record"])
    result.update(
        image_size=size,
        network={k: v for k, v in config.items() if k not in ("batch_size", "image_size")},
        batch_size=config["batch_size"],
        images=f"first {config['batch_size']} of {args.category}/train/good",
        textures="scikit-image photos (skimage_textures), a temporary folder" if name == "draem" else None,
    )
    title = (
        f"{name} training step, batch {config['batch_size']}, {size} px, "
        f"{', '.join(f'{k} {v}' for k, v in result['network'].items())}, {args.threads} thread(s)"
    )
    _abba.print_steps(title, result, ("adlearn", "anomalib"))
    return result


def markdown(results: dict) -> str:
    """The table for docs/log/2026-12-06-benchmarks-history.md."""
    lines = [
        "| model | network (both sides) | batch × size | adlearn CPU s/step | anomalib 2.7 CPU s/step | "
        "adlearn / anomalib | of which anomaly simulation (adlearn / anomalib) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        network = ", ".join(f"{k} {v}" for k, v in r["network"].items())
        ratio = (
            f"**{r['ratio_cpu']:.2f}**" + (" (measured under load)" if r["busy"] else "")
            if r["ratio_cpu"] is not None
            else "(under load: not reported)"
        )
        sims = [r[side]["info"].get("simulation") for side in ("adlearn", "anomalib")]
        sim = " / ".join(f"{s['median_cpu_s']:.3f}" for s in sims) if all(sims) else "—"
        lines.append(
            f"| {name} | {network} | {r['batch_size']} × {r['image_size']} px | "
            f"{r['adlearn']['median_cpu_s']:.2f} | {r['anomalib']['median_cpu_s']:.2f} | {ratio} | {sim} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="draem,ganomaly", help="comma-separated: draem, ganomaly")
    parser.add_argument(
        "--draem-size",
        type=int,
        default=64,
        help="DRAEM's image side, a multiple of 32 (64: ~12 CPU s a step; 128: ~4x that)",
    )
    parser.add_argument("--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps before measuring (default per model: "
        + ", ".join(f"{k} {v['warmup']}" for k, v in MODELS.items())
        + ")",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="ABBA rounds (default per model: " + ", ".join(f"{k} {v['rounds']}" for k, v in MODELS.items()) + ")",
    )
    parser.add_argument(
        "--steps-per-turn",
        type=int,
        default=None,
        help="steps per side per turn (default: "
        + ", ".join(f"{k} {v['steps_per_turn']}" for k, v in MODELS.items())
        + ")",
    )
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="report ratios even when other processes loaded the machine (marked as such)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=None,
        help="cores used by other processes above which a turn is busy (default 0.5)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        sys.exit(f"--models: unknown {unknown or models}; choose from {', '.join(MODELS)}")
    if "draem" in models and (args.draem_size < 32 or args.draem_size % 32):
        sys.exit(f"--draem-size must be a multiple of 32 (DRAEM's U-Net halves it 5 times), got {args.draem_size}")
    args.anomalib_python = anomalib_python(args.anomalib_python)
    args.root = str(mvtec_root(args.root))
    mvtec_category(args.root, args.category)

    sys.path.insert(0, str(REPO_ROOT))
    from adlearn.machine import LoadGuard, describe

    guard = LoadGuard(allow_busy=args.allow_busy, threshold=args.busy_threshold)
    began = clock()
    results = {}
    with tempfile.TemporaryDirectory(prefix="recon-steps-") as tmp:
        for name in models:
            results[name] = run_model(name, args, guard, Path(tmp))
    print(f"\nmachine: {describe()}; {since(began)[0]:.0f} s in all\n")
    print(markdown(results))
    if args.json:
        out = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "threads": args.threads,
            "argv": sys.argv[1:],
            "seconds": since(began)[0],
            **results,
            "machine": guard.summary(),
        }
        write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
