"""C-Flow, U-Flow and CS-Flow: process-CPU seconds per training step, adlearn beside anomalib 2.7.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_flows.py --json build/bench/flows.json

What one *step* is, on both sides, for one batch of ``--batch-size`` real bottle images (256 px,
ImageNet-normalised by adlearn's transform, the very same tensor given to both sides):

* adlearn: ``trainer.training_step(batch)`` of the model's ``cpu`` preset — the frozen backbone, the
  flow, the loss, backward, the optimizer step (C-Flow: one Adam step per chunk of
  ``fiber_batch_size`` fibers, all chunks of the batch);
* anomalib: the Lightning module's own ``training_step`` (its torch model and its loss) followed by
  what Lightning would do after it — ``zero_grad``, ``backward``, gradient clipping where the model's
  ``trainer_arguments`` ask for it (CS-Flow: 1), the optimizer step and a per-step scheduler (U-Flow).
  C-Flow optimizes manually inside its ``training_step``: ``optimizers()`` and ``manual_backward`` are
  pointed at a plain Adam from its ``configure_optimizers``. ``log`` is a no-op on both sides' timing.

Same settings on both sides: backbone and stages (anomalib builds its backbone through timm, with
adlearn's offline ``efficientnet_lite`` weights injected, see ``_anomalib.py``; a features check on
the batch compares both extractors), widths, blocks, batch, one thread (``--threads``).

anomalib needs three small, declared adaptations to run offline at these settings:

* U-Flow: its backbone is chosen from a fixed list (CaiT, ResNet-18, Wide-ResNet-50); its own
  ``LayerNormFeatureExtractor`` is built on the efficientnet_lite stages instead (the list lookup is
  replaced, nothing else).
* CS-Flow: its extractor is torchvision's EfficientNet-B5 (hub weights, 304 channels, hard-coded in
  its ``CrossScaleFlow`` input nodes). Its multi-scale extractor keeps its own loop (nearest
  interpolation of the ½ and ¼ images), but reads the efficientnet_lite stage of stride 32 (the same
  one adlearn reads), and the flow's input nodes get that stage's channel count instead of 304.
* C-Flow: none (its backbone goes through timm).

Measurement: each side runs in its own long-lived worker process (adlearn's venv, anomalib's venv),
builds its model, runs ``--warmup`` steps, then the driver asks for ``--steps`` steps at a time in the
order A B B A (``--rounds`` times): both sides see the same machine drift. Each step is timed inside
its worker with ``time.process_time`` (CPU of the whole process, all threads) and ``perf_counter``; the
table gives the median. ``adlearn.machine.LoadGuard`` records the machine and, around every block,
the CPU used by other processes (the workers' own CPU counts as ours); the ratio is refused when a
block ran busy (``--allow-busy`` to report it anyway).

This file is run with both interpreters: the top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, _anomalib
from _common import REPO_ROOT, anomalib_python, clock, mvtec_category, mvtec_root, since, write_json  # noqa: E402

MODELS = ("cflow", "uflow", "csflow")
REPLY = "@@bench "  # the prefix of a worker's answer on its stdout (libraries may print too)

# adlearn option -> anomalib Lightning-module argument, per model (the shared widths and blocks).
ANOMALIB_CLASS = {"cflow": "Cflow", "uflow": "Uflow", "csflow": "Csflow"}
ANOMALIB_ARGUMENTS = {
    "cflow": ("fiber_batch_size", "condition_vector", "coupling_blocks", "clamp_alpha", "permute_soft", "lr"),
    "uflow": ("flow_steps", "affine_clamp", "affine_subnet_channels_ratio", "permute_soft"),
    "csflow": ("cross_conv_hidden_channels", "n_coupling_blocks", "clamp"),
}
# What anomalib cannot change, so adlearn's side is set to it (before any --set): U-Flow's coupling subnets
# alternate 3x3 / 1x1 in anomalib; adlearn's cpu preset uses all-3x3 (`subnet_kernels=(3,)`).
FIXED_IN_ANOMALIB = {"uflow": {"subnet_kernels": (3, 1)}}


# ============================================================================== workers (either venv)
def _time_steps(step, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        began = clock()
        loss = step()
        wall, cpu = since(began)
        out.append({"cpu_s": cpu, "wall_s": wall, "loss": loss})
    return out


def _serve(step, ready: dict) -> int:
    """Answer the driver: 'steps N' -> N timed steps; 'quit' -> exit."""
    print(REPLY + json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "steps":
            print(REPLY + json.dumps({"steps": _time_steps(step, int(command[1]))}), flush=True)
    return 0


def _load_batch(spec: dict):
    import numpy as np
    import torch

    return torch.from_numpy(np.load(spec["batch"]))


def _warm_up(module, step, n: int) -> int:
    """Runs the ``n`` warm-up steps; returns how many parameters they changed (the ones really trained:
    a frozen backbone is skipped by the optimizer whether or not its ``requires_grad`` is off)."""
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    _time_steps(step, n)
    return sum(p.numel() for name, p in module.named_parameters() if not p.detach().equal(before[name]))


def _feature_sums(features) -> list[float]:
    values = features.values() if isinstance(features, dict) else features
    return [float(f.double().sum()) for f in values]


def adlearn_worker(spec: dict) -> int:
    import torch

    torch.set_num_threads(spec["threads"])
    from adlearn.models import create

    model = create(
        spec["model"],
        preset="cpu",
        device="cpu",
        seed=spec["seed"],
        amp=False,
        val_fraction=0.0,
        val_anomalies="none",
        **spec["options"],
    )
    images = _load_batch(spec)
    batch = {"image": images}
    trainer = model.trainer(verbose=False, progress=False)
    trainer.setup()
    if hasattr(model, "on_epoch_start"):
        model.on_epoch_start(trainer)
    extractor = getattr(model, "encoder", None) or model.feature_extractor
    with torch.no_grad():
        check = _feature_sums(extractor(images))

    def step():
        return trainer.training_step(batch)  # the loss as a float

    trainable = _warm_up(model, step, spec["warmup"])
    return _serve(
        step,
        {
            "side": "adlearn",
            "feature_check": check,
            "trained_parameters": trainable,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    )


def _anomalib_module(spec: dict):
    """anomalib's Lightning module at the spec's settings, on the injected offline backbone."""
    import torch
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    sys.path.insert(0, str(HERE))
    import _anomalib  # offline weights (it imports nothing from adlearn)
    import anomalib.models
    from anomalib.pre_processing import PreProcessor

    _anomalib.install_offline_weights()
    name, size = spec["model"], spec["image_size"]
    # input_size comes from the pre-processor; it is not run (both sides get the prepared batch).
    pre = PreProcessor(
        transform=Compose(
            [Resize((size, size), antialias=True), Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
        )
    )
    arguments = dict(spec["anomalib"])
    common = {"pre_processor": pre, "post_processor": False, "evaluator": False, "visualizer": False}
    if name == "cflow":
        return anomalib.models.Cflow(backbone=spec["backbone"], layers=spec["timm_layers"], **arguments, **common)
    if name == "uflow":
        from anomalib.models.image.uflow import torch_model as uflow_torch
        from anomalib.models.image.uflow.feature_extraction import LayerNormFeatureExtractor

        def lite_extractor(backbone, input_size):  # in place of the fixed CaiT/ResNet list
            return LayerNormFeatureExtractor(spec["backbone"], input_size, layers=tuple(spec["timm_layers"])).eval()

        uflow_torch.get_feature_extractor = lite_extractor
        return anomalib.models.Uflow(backbone="resnet18", **arguments, **common)
    if name == "csflow":
        from anomalib.models.components.feature_extractors import TimmFeatureExtractor
        from anomalib.models.image.csflow import torch_model as csflow_torch

        channels = spec["channels"][0]
        original_input_node = csflow_torch.InputNode

        def input_node(c, *args, **kwargs):  # the flow's hard-coded 304 -> the lite stage's width
            return original_input_node(channels if c == 304 else c, *args, **kwargs)

        csflow_torch.InputNode = input_node
        csflow_torch.efficientnet_b5 = lambda weights=None: __import__("torchvision").models.efficientnet_b5()
        module = anomalib.models.Csflow(**arguments, **common)
        stage = spec["timm_layers"][0]

        class LiteStage(torch.nn.Module):  # answers to the B5 node name its loop reads
            def __init__(self):
                super().__init__()
                self.extractor = TimmFeatureExtractor(spec["backbone"], [stage], pre_trained=True)

            def forward(self, images):
                return {"features.6.8": self.extractor(images)[stage]}

        module.model.feature_extractor.feature_extractor = LiteStage().eval()
        return module
    raise ValueError(f"unknown model {name!r}")


def anomalib_worker(spec: dict) -> int:
    import types
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    module = _anomalib_module(spec)
    images = _load_batch(spec)
    batch = types.SimpleNamespace(image=images)
    module.train()
    module.log = module.log_dict = lambda *args, **kwargs: None
    configured = module.configure_optimizers()
    if isinstance(configured, tuple):  # ([optimizers], [schedulers])
        optimizer, scheduler = configured[0][0], (configured[1][0] if configured[1] else None)
    else:
        optimizer, scheduler = configured, None
    clip = float(module.trainer_arguments.get("gradient_clip_val", 0) or 0)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    if not module.automatic_optimization:  # C-Flow: its steps happen inside training_step
        module.optimizers = lambda: optimizer
        module.manual_backward = lambda loss: loss.backward()

        def step():
            return float(module.training_step(batch)["loss"])
    else:

        def step():
            optimizer.zero_grad()
            loss = module.training_step(batch)["loss"]
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(parameters, clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            return float(loss)

    inner = module.model
    extractor = getattr(inner, "encoder", None) or inner.feature_extractor
    with torch.no_grad():
        if spec["model"] == "csflow":
            check = _feature_sums([extractor.feature_extractor(images)["features.6.8"]])
        elif spec["model"] == "uflow":
            check = _feature_sums(extractor.extract_features(images))
        else:
            check = _feature_sums(extractor(images))
    trainable = _warm_up(module, step, spec["warmup"])
    import anomalib

    return _serve(
        step,
        {
            "side": "anomalib",
            "feature_check": check,
            "trained_parameters": trainable,
            "threads": torch.get_num_threads(),
            "anomalib": anomalib.__version__,
            "torch": torch.__version__,
            "gradient_clip_val": clip,
        },
    )


# ============================================================================== driver (adlearn's venv)
class Worker:
    """One side's long-lived process; ``steps(n)`` returns n timed steps."""

    def __init__(self, python: str, side: str, spec_path: Path, log_path: Path, env: dict):
        self.side, self.log_path = side, log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [python, __file__, "--worker", side, str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        self.ready = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
            self.log.write(line)
        self.log.flush()
        raise RuntimeError(
            f"the {self.side} worker stopped (exit {self.process.wait()}); its log: {self.log_path}:\n"
            + Path(self.log_path).read_text()[-3000:]
        )

    def steps(self, n: int) -> list[dict]:
        self.process.stdin.write(f"steps {n}\n")
        self.process.stdin.flush()
        return self._answer()["steps"]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def prepare_batch(name: str, root: str, category: str, batch_size: int, options: dict, path: Path) -> dict:
    """Saves the first ``batch_size`` training images (adlearn's transform) and returns the shared settings."""
    import numpy as np
    import torch

    from adlearn.data import MVTecDataset
    from adlearn.models import create

    model = create(name, preset="cpu", device="cpu", **options)
    data = MVTecDataset(root, category, "train", model.transform)
    if len(data) < batch_size:
        raise ValueError(f"{root}/{category} has {len(data)} training images, fewer than --batch-size {batch_size}")
    images = torch.stack([data[i]["image"] for i in range(batch_size)])
    np.save(path, images.numpy())
    hp = dict(model.config)
    extractor = getattr(model, "encoder", None) or model.feature_extractor
    return {
        "backbone": hp["backbone"],
        "timm_layers": list(extractor.stage_names),
        "channels": list(extractor.out_dims),
        "image_size": int(model.input_size[0]),
        "anomalib": {key: hp[key] for key in ANOMALIB_ARGUMENTS[name] if key in hp},
        "adlearn_hparams": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in hp.items()
            if isinstance(v, (int, float, str, bool, tuple, list, type(None)))
        },
    }


def run_model(name: str, args, guard, workdir: Path) -> dict:
    options = {
        "batch_size": args.batch_size,
        **FIXED_IN_ANOMALIB.get(name, {}),
        **args.options.get("", {}),
        **args.options.get(name, {}),
    }
    spec = {
        "model": name,
        "threads": args.threads,
        "seed": args.seed,
        "warmup": args.warmup,
        "batch": str(workdir / f"{name}_batch.npy"),
        "options": options,
    }
    spec.update(prepare_batch(name, args.root, args.category, args.batch_size, options, Path(spec["batch"])))
    spec_path = workdir / f"{name}_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    anomalib_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # anomalib's venv never imports adlearn
    print(f"{name}: starting both workers (model build + {args.warmup} warm-up step(s) each)", flush=True)
    workers = {"adlearn": Worker(sys.executable, "adlearn", spec_path, workdir / f"{name}_adlearn.log", env)}
    try:
        workers["anomalib"] = Worker(
            args.anomalib_python, "anomalib", spec_path, workdir / f"{name}_anomalib.log", anomalib_env
        )
        steps = {"adlearn": [], "anomalib": []}
        labels = {"adlearn": [], "anomalib": []}
        for r in range(args.rounds):
            for k, side in enumerate(("adlearn", "anomalib", "anomalib", "adlearn")):
                label = f"{name} {side} round {r + 1} block {k + 1}"
                with guard.measure(label, pids=(workers[side].process.pid,)):
                    steps[side] += workers[side].steps(args.steps)
                labels[side].append(label)
        ready = {side: w.ready for side, w in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()
    median = {side: statistics.median(s["cpu_s"] for s in steps[side]) for side in steps}
    median_wall = {side: statistics.median(s["wall_s"] for s in steps[side]) for side in steps}
    checks = [ready[s]["feature_check"] for s in ("adlearn", "anomalib")]
    same_features = len(checks[0]) == len(checks[1]) and all(
        abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(*checks)
    )
    return {
        "model": name,
        "settings": {k: spec[k] for k in ("backbone", "timm_layers", "channels", "image_size", "anomalib")},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "steps": steps,
        "workers": ready,
        "cpu_s_median": median,
        "wall_s_median": median_wall,
        "same_backbone_features": same_features,
        "ratio_adlearn_over_anomalib": guard.ratio(
            median["adlearn"], median["anomalib"], *labels["adlearn"], *labels["anomalib"]
        ),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | settings | batch | steps per side | adlearn CPU s / step | anomalib CPU s / step | "
        "adlearn / anomalib | trained parameters (adlearn / anomalib) | same backbone features |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row["settings"]
        widths = ", ".join(f"{k} {v}" for k, v in s["anomalib"].items() if k != "lr")
        ratio = row["ratio_adlearn_over_anomalib"]
        lines.append(
            f"| {row['model']} | {s['backbone']} {'/'.join(s['timm_layers'])}, {widths} | {row['batch_size']} | "
            f"{len(row['steps']['adlearn'])} | {row['cpu_s_median']['adlearn']:.3f} | "
            f"{row['cpu_s_median']['anomalib']:.3f} | "
            f"{'not reported (busy)' if ratio is None else f'{ratio:.2f}'} | "
            f"{row['workers']['adlearn']['trained_parameters']:,} / "
            f"{row['workers']['anomalib']['trained_parameters']:,} | "
            f"{'yes' if row['same_backbone_features'] else 'NO'} |"
        )
    return "\n".join(lines)


def parse_set(values: list[str]) -> dict[str, dict]:
    """``["backbone=efficientnet_lite0", "cflow.coupling_blocks=2"]`` ->
    ``{"": {"backbone": ...}, "cflow": {"coupling_blocks": 2}}`` (values read as JSON when they parse)."""
    out: dict[str, dict] = {}
    for item in values:
        key, equals, text = item.partition("=")
        if not equals:
            raise SystemExit(f"--set takes KEY=VALUE or MODEL.KEY=VALUE, got {item!r}")
        model, _, key = key.rpartition(".")
        if model and model not in MODELS:
            raise SystemExit(f"--set {item!r}: {model!r} is not one of {MODELS}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(model, {})[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        spec = json.loads(Path(argv[2]).read_text())
        return adlearn_worker(spec) if argv[1] == "adlearn" else anomalib_worker(spec)

    from adlearn.machine import add_arguments, describe, guard_from_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--root", help="MVTec-layout root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (the cpu presets': 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side before the first block")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions of the A B B A order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an adlearn model option, for every model (backbone=efficientnet_lite0) or one "
        "(cflow.coupling_blocks=2); the shared widths follow to anomalib",
    )
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--json", type=Path)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.options = parse_set(args.set)
    args.root = str(mvtec_root(args.root))
    mvtec_category(args.root, args.category)
    args.anomalib_python = anomalib_python(args.anomalib_python)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        sys.exit("--warmup, --steps and --rounds must be >= 1")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        sys.exit(f"unknown model(s) {sorted(unknown)}; choose from {MODELS}")

    import torch

    torch.set_num_threads(args.threads)
    guard = guard_from_args(args)
    print(describe(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-flows-") as tmp:
        for name in models:
            rows.append(run_model(name, args, guard, Path(tmp)))
            row = rows[-1]
            print(
                f"{name}: adlearn {row['cpu_s_median']['adlearn']:.3f} CPU s/step, anomalib "
                f"{row['cpu_s_median']['anomalib']:.3f} (medians of {len(row['steps']['adlearn'])})",
                flush=True,
            )
    print()
    print(table(rows))
    if args.json:
        command = " ".join(["benchmarks/bench_flows.py", *argv])
        write_json(args.json, {"command": command, "rows": rows, "machine": guard.summary()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
