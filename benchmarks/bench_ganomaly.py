"""GANomaly across seeds: the real MVTec bottle, and scikit-learn's digits one-class (the paper's protocol
is MNIST one-class), beside the pixel-PCA baseline of `bench_digits.py`.

GANomaly's scores are known to swing from run to run (users of the reference report image AUROC between
~0.23 and ~0.51 on MVTec categories), so every figure is a mean ± std over seeds, with each seed's value.

    .venv/bin/python benchmarks/bench_ganomaly.py bottle --seeds 0 1 2 --json ganomaly_bottle.json
    .venv/bin/python benchmarks/bench_ganomaly.py digits --seeds 0 1 2 --json ganomaly_digits.json
    .venv/bin/python benchmarks/bench_ganomaly.py anomalib --seeds 0 --json ganomaly_anomalib.json

``bottle`` uses the ``cpu`` preset (``--set KEY=VALUE`` overrides options); ``digits`` trains at 32 px (the
paper's MNIST size) for ``--epochs`` epochs on half of one digit and tests on its other half plus every
other digit. ``anomalib`` trains anomalib 2.7's ``Ganomaly`` (its own venv, a subprocess running this file
with ``--anomalib-side``, which imports nothing from adlearn) on the bottle with the cpu preset's network
(64 px, ``n_features`` 32, ``latent_vec_size`` 100) for the preset's epochs, no validation, then
``Engine.test``: its image AUROC and the CPU seconds of each training epoch, to compare with ``bottle``.
CPU time is measured with one torch thread (``--threads``).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import anomalib_python, clock, mvtec_category, mvtec_root, since, write_json  # noqa: E402

# Nothing from adlearn (nor scikit-learn) at module level: the anomalib side runs this file in its own venv.


def parse_set(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, raw = pair.split("=", 1)
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def run_bottle(args, options: dict) -> dict:
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import fit_and_evaluate
    from adlearn.models import create

    root = args.root
    runs = []
    for seed in args.seeds:
        model = create("ganomaly", preset="cpu", device="cpu", seed=seed, **options)
        train = MVTecDataset(root, "bottle", "train", transform=model.transform)
        test = MVTecDataset(root, "bottle", "test", transform=model.transform)
        cpu_start, marks = time.process_time(), [time.process_time()]

        def cpu_mark(trainer, record):  # CPU seconds of each epoch (no validation here)
            marks.append(time.process_time())  # noqa: B023 (called within this iteration)

        model.fit = (lambda fit: lambda data, **kw: fit(data, callbacks=[cpu_mark], **kw))(model.fit)
        results = fit_and_evaluate(model, train, test)
        epoch_cpu = list(np.diff(marks))
        run = {
            "seed": seed,
            "image_auroc": results["image_auroc"],
            "fit_seconds": results["fit_seconds"],
            "cpu_seconds": time.process_time() - cpu_start,
            "epochs": len(model.history.epoch),
            "epoch_seconds": float(np.mean(model.history.seconds)),
            "epoch_cpu_s": float(np.median(epoch_cpu[1:] or epoch_cpu)),
        }
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    aurocs = [r["image_auroc"] for r in runs]
    print(
        f"bottle, GANomaly cpu preset {options or ''}: image AUROC {summary(aurocs)}; "
        f"fit {np.mean([r['fit_seconds'] for r in runs]):.0f} s per seed"
    )
    return {"options": options, "runs": runs, "mean": float(np.mean(aurocs)), "std": float(np.std(aurocs))}


def run_digits(args, options: dict) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.metrics import roc_auc_score

    from adlearn.data import digit_images, one_class_split
    from adlearn.models import create

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_digits import pixel_pca_scores  # the scikit-learn baseline, beside this file

    images, labels = digit_images(size=32)
    raw = load_digits().data.astype(np.float64)
    table = {"ganomaly": {}, "pixels + PCA error (scikit-learn)": {}}
    began = time.perf_counter()
    for digit in args.digits:
        ganomaly, pca = [], []
        for seed in args.seeds:
            split = one_class_split(labels, digit, n_others=None, seed=seed)
            model = create("ganomaly", image_size=32, device="cpu", seed=seed, max_epochs=args.epochs, **options)
            model.fit(images[split.train], verbose=False)
            scores = model.predict(images[split.test]).pred_score.numpy()
            ganomaly.append(float(roc_auc_score(split.is_anomalous, scores)))
            baseline = pixel_pca_scores(raw[split.train.numpy()], raw[split.test.numpy()], seed)
            pca.append(float(roc_auc_score(split.is_anomalous, baseline)))
        table["ganomaly"][digit], table["pixels + PCA error (scikit-learn)"][digit] = ganomaly, pca
        print(f"digit {digit}: GANomaly {summary(ganomaly)}; PCA {summary(pca)}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - began
    print(f"\nimage AUROC, mean ± std over seeds {args.seeds} (32 px, {args.epochs} epochs, {seconds:.0f} s)\n")
    print("| normal digit | GANomaly | pixels + PCA error (scikit-learn) |\n|---|---|---|")
    for digit in args.digits:
        cells = [f"{np.mean(v[digit]):.3f} ± {np.std(v[digit]):.3f}" for v in table.values()]
        print(f"| {digit} | " + " | ".join(cells) + " |")
    means = [np.mean([np.mean(v[d]) for d in args.digits]) for v in table.values()]
    print("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return {"options": options, "epochs": args.epochs, "seconds": seconds, "auroc": table}


def run_anomalib_side(spec_path: str, out_path: str) -> int:
    """In anomalib's venv: Ganomaly at the spec's size and width, ``epochs`` epochs, then Engine.test."""
    import logging
    import tempfile
    import warnings

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _anomalib  # the shared helpers: datamodule, model building
    from anomalib.engine import Engine
    from anomalib.models import Ganomaly
    from lightning.pytorch import Callback, seed_everything

    spec = json.loads(Path(spec_path).read_text())
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"], verbose=False)
    size = (spec["image_size"], spec["image_size"])
    model = _anomalib.build_model("Ganomaly", {**spec["init"], "pre_processor": Ganomaly.configure_pre_processor(size)})
    datamodule = _anomalib.make_datamodule(spec["root"], "bottle", spec["init"].get("batch_size", 32), 0, spec["seed"])

    class EpochTimer(Callback):
        rows: list = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = clock()

        def on_train_epoch_end(self, trainer, pl_module):
            wall, cpu = since(self.start)
            self.rows.append({"s": wall, "cpu_s": cpu})

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
        results = engine.test(model=model, datamodule=datamodule, verbose=False)
    import anomalib

    write_json(
        out_path,
        {
            "anomalib_version": anomalib.__version__,
            "epochs": timer.rows,
            "n_train": len(datamodule.train_data),
            "test": {key: float(value) for key, value in (results[0] if results else {}).items()},
        },
    )
    return 0


def run_anomalib(args, options: dict) -> dict:
    import subprocess
    import tempfile

    from adlearn.models import get_model_class

    preset = {**get_model_class("ganomaly").preset("cpu"), **options}
    python, root = args.anomalib_python, args.root
    runs = []
    for seed in args.seeds:
        init = {
            "n_features": preset["n_features"],
            "latent_vec_size": preset.get("latent_size", 100),
            "batch_size": preset.get("batch_size", 32),
        }
        with tempfile.TemporaryDirectory() as tmp:
            spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
            spec.write_text(
                json.dumps(
                    {
                        "init": init,
                        "image_size": preset["image_size"],
                        "epochs": preset["max_epochs"],
                        "root": root,
                        "threads": args.threads,
                        "seed": seed,
                    }
                )
            )
            done = subprocess.run(
                [python, __file__, "--anomalib-side", str(spec), str(out)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"anomalib side failed:\n{done.stderr[-3000:]}")
            result = json.loads(out.read_text())
        cpu, wall = [row["cpu_s"] for row in result["epochs"]], [row["s"] for row in result["epochs"]]
        run = {
            "seed": seed,
            "image_auroc": result["test"].get("image_AUROC"),
            "cpu_seconds": float(sum(cpu)),
            "epoch_cpu_s": float(np.median(cpu[1:] or cpu)),
            "epoch_s": float(np.median(wall[1:] or wall)),
            **result,
        }
        runs.append(run)
        print(
            json.dumps({k: run[k] for k in ("seed", "image_auroc", "epoch_cpu_s", "epoch_s")}),
            file=sys.stderr,
            flush=True,
        )
    print(
        f"bottle, anomalib {runs[0]['anomalib_version']} Ganomaly {init}, {preset['image_size']} px, "
        f"{preset['max_epochs']} epochs: image AUROC {summary([r['image_auroc'] for r in runs])}; "
        f"median epoch {np.mean([r['epoch_cpu_s'] for r in runs]):.1f} CPU s"
    )
    return {"options": init, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", choices=["bottle", "digits", "anomalib"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15, help="digits: epochs per fit (the paper's MNIST runs: 15)")
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)), help="digits: the normal classes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", help="bottle, anomalib: MVTec AD root (default: $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--anomalib-python", help="anomalib: its venv's python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--json")
    parser.add_argument("--anomalib-side", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.anomalib_side:
        return run_anomalib_side(*args.anomalib_side)
    if args.data is None:
        parser.error("choose the data: bottle, digits or anomalib")
    if args.data in ("bottle", "anomalib"):
        args.root = str(mvtec_root(args.root))
        mvtec_category(args.root, "bottle")
    if args.data == "anomalib":
        args.anomalib_python = anomalib_python(args.anomalib_python)
    torch.set_num_threads(args.threads)
    options = parse_set(args.set)
    runner = {"bottle": run_bottle, "digits": run_digits, "anomalib": run_anomalib}[args.data]
    result = runner(args, options)
    result.update(seeds=args.seeds, threads=args.threads, torch=torch.__version__)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
