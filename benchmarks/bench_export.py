"""Predict speed of exported models on CPU: eager PyTorch vs onnxruntime vs OpenVINO, batch 1 and 16, for every
exportable model; and PaDiM and PatchCore exported by anomalib 2.7 to OpenVINO beside ours.

    python benchmarks/bench_export.py --help
    python benchmarks/bench_export.py --root $ADLEARN_MVTEC_ROOT --category bottle --threads 2 \\
        --anomalib-python $ANOMALIB_PYTHON                        # resumable: done cells are skipped
    python benchmarks/bench_export.py --models padim,patchcore --restart
    python benchmarks/bench_export.py --models patchcore --prepare    # fit + export only (the slow part)

Fitted models are cached in ``build/bench_export/<category>/<side>_<model>_<key>/`` (the key hashes what changes
a fit: backbone, layers, sizes, coreset ratio, seed, training folder; never threads or batch sizes): adlearn's
fitted model (``model.pt``; it is exported again on every run, so the current export code is what gets timed)
and anomalib's ``Engine.export`` OpenVINO folder. A timing pass (``--restart`` to redo timed cells) then
refits nothing; ``--prepare`` fills the caches without timing (``--no-adlearn`` / ``--no-anomalib``: one side).

What is timed, per (model, runtime, batch size): from decoded RGB images (PIL, at the file's size) to image
scores and maps, ``--images`` test images, after one warm-up batch; images/s = images / wall seconds.
Every side does the same work: resize, then the graph. adlearn's runtimes resize with PIL outside the graph
(`adlearn.deploy.load_image`) and run crop, normalisation, backbone, scoring and map post-processing inside
it; eager PyTorch runs the same steps through `adlearn.export.TorchInference`. anomalib's exported graph
(``Engine.export``, dynamo exporter, input fixed at 256 × 256) holds its pre-processor (normalisation; its
resize is then the identity), the model and its post-processor (score normalisation and thresholding); its
``OpenVINOInferencer`` is fed [0, 1] arrays resized with PIL in the timed loop, as adlearn's are.

Models: memory-bank models fit on the whole training split (a bank's size sets its search cost); trained models
take ``--train-steps`` steps (their speed does not depend on how long they trained). The PaDiM and PatchCore
configurations are the anomalib comparison's: efficientnet_lite0 (offline weights on both sides),
PaDiM layers 1–3 with 100 channels at 256 px, PatchCore layers 2–3, coreset 10 %, 9 neighbours, 256 px
center-cropped to 224. Scores: the largest relative difference between each runtime's and eager scores,
and each side's image AUROC on the timed images (equal quality, not equal numbers: the two sides' channel
choice and coreset differ).

Timings under load are marked ``busy`` (``adlearn.machine.LoadGuard``; the tables print ``†``). The results go
to ``benchmarks/results/side_by_side/export_<category>.json``, one entry per cell, written after each cell; a rerun skips
the cells already there (``--restart`` starts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, anomalib_python, mvtec_root, write_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "side_by_side"
CACHE = REPO_ROOT / "build" / "bench_export"  # fitted models, one folder per config (gitignored)
RUNTIMES = ("pytorch", "onnxruntime", "openvino")
ANOMALIB_MODELS = {
    "padim": {"model": "Padim", "init": {"layers": ["blocks.1", "blocks.2", "blocks.4"], "n_features": 100}},
    "patchcore": {
        "model": "Patchcore",
        "init": {"layers": ["blocks.2", "blocks.4"], "coreset_sampling_ratio": 0.1, "num_neighbors": 9},
    },
}
ADLEARN_OPTIONS = {
    "padim": {"n_features": 100, "image_size": 256},
    "patchcore": {"coreset_sampling_ratio": 0.1, "num_neighbors": 9, "image_size": 256, "center_crop": 224},
}


# ----------------------------------------------------------------------------- data
def test_images(root: Path, category: str, count: int):
    """``count`` test images spread evenly over the sorted list (so every defect type and the good ones are in
    it, and the image AUROC is defined): (paths, labels, decoded PIL images)."""
    from PIL import Image

    paths = sorted(p for p in (root / category / "test").rglob("*.png"))
    count = min(count, len(paths))
    chosen = [paths[(index * len(paths)) // count] for index in range(count)]
    images = []
    for path in chosen:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    labels = [0 if path.parent.name == "good" else 1 for path in chosen]
    return chosen, labels, images


def auroc(labels, scores) -> float | None:
    from adlearn.metrics import image_auroc

    return float(image_auroc(labels, scores)) if 0 < sum(labels) < len(labels) else None


# ----------------------------------------------------------------------------- adlearn side
# ----------------------------------------------------------------------------- fitted-model cache
def cache_folder(category: str, side: str, model: str, config: dict) -> Path:
    """``build/bench_export/<category>/<side>_<model>_<key>/``: the key hashes everything that changes the fit
    (backbone, layers, sizes, coreset ratio, seed, training folder), never the timing settings (threads, batch)."""
    key = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return CACHE / category / f"{side}_{model}_{key}"


def adlearn_config(name: str, root: Path, category: str, train_steps: int, seed: int) -> dict:
    options = {"preset": "cpu", "device": "cpu", "seed": seed, **ADLEARN_OPTIONS.get(name, {})}
    return {
        "model": name,
        "options": options,
        "train": str(Path(root).resolve() / category / "train"),
        "train_steps": train_steps,
    }


def cached_model(name: str, root: Path, category: str, train_steps: int, seed: int):
    """The fitted adlearn model, loaded from the cache when this config was fitted before, else fitted and saved.

    Only the fit is cached: the timing pass exports it again, so a change to the export code is always timed."""
    from adlearn.models import load

    config = adlearn_config(name, root, category, train_steps, seed)
    folder = cache_folder(category, "adlearn", name, config)
    if (folder / "model.pt").is_file():
        print(f"{name}: fitted model from {folder.relative_to(REPO_ROOT)}", file=sys.stderr, flush=True)
        return load(folder / "model.pt", device="cpu")
    print(f"{name}: fitting", file=sys.stderr, flush=True)
    model = fit_model(name, root, category, train_steps, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.part")
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    os.replace(folder / "model.part", folder / "model.pt")  # complete or absent: an interrupted fit is redone
    return model


def fit_model(name: str, root: Path, category: str, train_steps: int, seed: int):
    from adlearn.data import MVTecDataset
    from adlearn.models import TrainedModel, create

    options = adlearn_config(name, root, category, train_steps, seed)["options"]
    model = create(name, **options)
    train = MVTecDataset(root, category, "train", transform=model.transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, TrainedModel):
            model.fit(train, max_steps=train_steps, val_fraction=0.0, verbose=False)
        else:
            model.fit(train)
    return model


def time_runner(runner, images, batch: int) -> tuple[float, list[float]]:
    """Seconds to score ``images`` (PIL) in batches, after one warm-up batch; and the scores."""
    import numpy as np

    runner.predict(np.stack([runner.load_image(image) for image in images[:batch]]))  # warm-up
    scores = []
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        pixels = np.stack([runner.load_image(image) for image in images[first : first + batch]])
        scores.extend(runner.predict(pixels).pred_score.numpy().tolist())
    return time.perf_counter() - start, scores


def adlearn_cells(name, args, root, results, guard, save) -> None:
    import numpy as np
    import torch

    from adlearn.deploy import InferenceModel
    from adlearn.export import TorchInference, export

    todo = [(rt, b) for rt in RUNTIMES for b in args.batches if cell_key(name, "adlearn", rt, b) not in results]
    if not todo:
        return
    torch.set_num_threads(args.threads)
    paths, labels, images = test_images(root, args.category, args.images)
    model = cached_model(name, root, args.category, args.train_steps, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        export(model, folder, format="onnx,openvino")
        runners = {
            "pytorch": TorchInference(model),
            "onnxruntime": InferenceModel(folder, runtime="onnxruntime", threads=args.threads),
            "openvino": InferenceModel(folder, runtime="openvino", threads=args.threads),
        }
        eager_scores = None
        for runtime, batch in sorted(todo, key=lambda cell: RUNTIMES.index(cell[0])):
            label = f"{name} adlearn {runtime} batch {batch}"
            with guard.measure(label) as record:
                seconds, scores = time_runner(runners[runtime], images, batch)
            if runtime == "pytorch":
                eager_scores = np.array(scores)
            elif eager_scores is None:
                eager_scores = np.array(time_runner(runners["pytorch"], images, batch)[1])
            difference = float(np.abs(np.array(scores) - eager_scores).max() / np.abs(eager_scores).max())
            results[cell_key(name, "adlearn", runtime, batch)] = {
                "model": name,
                "side": "adlearn",
                "runtime": runtime,
                "batch": batch,
                "images": len(images),
                "images_per_s": round(len(images) / seconds, 2),
                "score_rel_difference_to_eager": difference,
                "image_auroc": auroc(labels, scores),
                "busy": bool(record.get("busy")),
                "other_cpus": record.get("other_cpus"),
            }
            print(f"  {label}: {len(images) / seconds:.1f} images/s", file=sys.stderr, flush=True)
            save()


# ----------------------------------------------------------------------------- anomalib side
def anomalib_spec(name: str, args, root: Path, batches: list[int]) -> dict:
    """What the anomalib half needs; its fitted + exported model is cached under the config's key."""
    config = {
        **ANOMALIB_MODELS[name],
        "backbone": "efficientnet_lite0",
        "input_size": 256,
        "crop": ADLEARN_OPTIONS[name].get("center_crop"),
        "seed": args.seed,
        "train": str(Path(root).resolve() / args.category / "train"),
    }
    return {
        **config,
        "name": name,
        "root": str(root),
        "category": args.category,
        "images": args.images,
        "batches": batches,
        "threads": args.threads,
        "cache": str(cache_folder(args.category, "anomalib", name, config)),
    }


def anomalib_cells(name, args, root, results, guard, save, prepare_only: bool = False) -> None:
    todo = [] if prepare_only else [b for b in args.batches if cell_key(name, "anomalib", "openvino", b) not in results]
    if name not in ANOMALIB_MODELS or not (todo or prepare_only):
        return
    python = anomalib_python(args.anomalib_python, required=False)
    if python is None:
        print(f"{name}: no anomalib interpreter (--anomalib-python / $ANOMALIB_PYTHON): skipped", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as folder:
        spec = anomalib_spec(name, args, root, todo)
        spec_path, out_path = Path(folder) / "spec.json", Path(folder) / "out.json"
        spec_path.write_text(json.dumps(spec))
        print(f"{name}: anomalib {'fit + export' if prepare_only else 'timing'} ({spec['cache']})", file=sys.stderr)
        process = subprocess.Popen(
            [python, __file__, "--anomalib-side", str(spec_path), "--anomalib-out", str(out_path)]
        )
        with guard.measure(f"{name} anomalib (all batches)", pids=(process.pid,)) as record:
            process.wait()
        if process.returncode != 0:
            raise SystemExit(f"the anomalib side failed for {name} (exit {process.returncode})")
        for cell in json.loads(out_path.read_text()):
            cell.update(busy=bool(record.get("busy")), other_cpus=record.get("other_cpus"))
            results[cell_key(name, "anomalib", "openvino", cell["batch"])] = cell
            print(f"  {name} anomalib openvino batch {cell['batch']}: {cell['images_per_s']} images/s", file=sys.stderr)
        if not prepare_only:
            save()


def anomalib_export(spec: dict) -> Path:
    """Runs in anomalib's venv: the cached ``model.xml``, or fit on the category + ``Engine.export`` to OpenVINO.

    The export lands in ``<cache>/export.part`` and is renamed to ``<cache>/export`` only once complete, so an
    interrupted fit is redone and a finished one is never redone."""
    import shutil

    import _anomalib
    import torch

    cache = Path(spec["cache"])
    done = cache / "export.json"
    if done.is_file():
        return cache / json.loads(done.read_text())["xml"]
    from lightning.pytorch import seed_everything

    seed_everything(spec["seed"], verbose=False)
    torch.set_num_threads(spec["threads"])
    if spec.get("crop"):
        from anomalib.models import Patchcore

        default = Patchcore.configure_pre_processor
        crop = spec["crop"]
        Patchcore.configure_pre_processor = classmethod(
            lambda cls, image_size=None, center_crop_size=None: default(image_size, center_crop_size or (crop, crop))
        )
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine

    model = _anomalib.build_model(spec["model"], {"backbone": spec["backbone"], "pre_trained": True, **spec["init"]})
    datamodule = _anomalib.make_datamodule(spec["root"], spec["category"], batch_size=32, seed=spec["seed"])
    partial = cache / "export.part"
    owner = cache / "fitting.pid"  # one fit per cache folder: a second process would clobber the first's export
    if owner.is_file() and _alive(int(owner.read_text() or 0)):
        raise SystemExit(f"process {owner.read_text()} is fitting this model into {cache}: wait for it (or end it)")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    owner.write_text(str(os.getpid()))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(accelerator="cpu", devices=1, default_root_dir=folder, logger=False, enable_progress_bar=False)
        engine.fit(model=model, datamodule=datamodule)
        fit_s = time.perf_counter() - began
        size = (spec["input_size"], spec["input_size"])
        xml = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=partial, input_size=size)
    relative = Path(xml).resolve().relative_to(partial.resolve())
    shutil.rmtree(cache / "export", ignore_errors=True)
    partial.rename(cache / "export")
    config = {k: spec[k] for k in ("model", "init", "backbone", "input_size", "crop", "seed", "train")}
    done.write_text(json.dumps({"xml": str("export" / relative), "fit_s": round(fit_s, 1), "config": config}))
    owner.unlink(missing_ok=True)
    return cache / "export" / relative


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def anomalib_side(spec_path: str, out_path: str) -> int:
    """Runs in anomalib's venv: the (cached) OpenVINO export, then ``OpenVINOInferencer`` timed on the test images."""
    import numpy as np
    import torch

    spec = json.loads(Path(spec_path).read_text())
    xml = anomalib_export(spec)
    cells = []
    if spec["batches"]:
        from anomalib.deploy import OpenVINOInferencer
        from PIL import Image

        torch.set_num_threads(spec["threads"])
        paths, labels, images = test_images(Path(spec["root"]), spec["category"], spec["images"])
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)  # the inferencer writes its compiled-model cache (openvino_cache/) into the working folder
            inferencer = OpenVINOInferencer(path=xml, device="CPU", config={"INFERENCE_NUM_THREADS": spec["threads"]})

            def pixels(chunk):  # (B, 256, 256, 3) in [0, 1]: the graph's fixed input size, resized as ours are
                size = (spec["input_size"], spec["input_size"])
                return np.stack([np.asarray(i.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0 for i in chunk])

            fixed = inferencer.input_blob.get_partial_shape()[0]  # anomalib's PatchCore export fixes the batch
            fixed = fixed.get_length() if fixed.is_static else None
            for requested in spec["batches"]:
                batch = fixed or requested  # a graph of fixed batch size runs only that size
                inferencer.predict(pixels(images[:batch]))  # warm-up
                scores, start = [], time.perf_counter()
                for first in range(0, len(images) - len(images) % batch, batch):
                    result = inferencer.predict(pixels(images[first : first + batch]))
                    scores.extend(np.asarray(result.pred_score).reshape(-1).tolist())
                seconds = time.perf_counter() - start
                cells.append(
                    {
                        "model": spec["name"],
                        "side": "anomalib",
                        "runtime": "openvino",
                        "batch": requested,
                        "batch_run": batch,
                        "images": len(scores),
                        "images_per_s": round(len(scores) / seconds, 2),
                        "image_auroc": auroc_plain(labels, scores),
                    }
                )
            os.chdir(REPO_ROOT)  # out of the folder before it is removed
    Path(out_path).write_text(json.dumps(cells))
    return 0


def auroc_plain(labels, scores) -> float | None:
    """ROC AUC by pairs (the anomalib venv has no adlearn): P(score_anomalous > score_normal), ties half."""
    positives = [s for s, y in zip(scores, labels) if y]
    negatives = [s for s, y in zip(scores, labels) if not y]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


# ----------------------------------------------------------------------------- table
def cell_key(model: str, side: str, runtime: str, batch: int) -> str:
    return f"{model}/{side}/{runtime}/{batch}"


def table(results: dict) -> str:
    """Markdown: images/s per model and runtime at each batch size (``†``: measured under load)."""
    batches = sorted({cell["batch"] for cell in results.values()})
    columns = [("adlearn", rt) for rt in RUNTIMES] + [("anomalib", "openvino")]
    header = "| model | batch | " + " | ".join(f"{side} {rt}" for side, rt in columns) + " | AUROC (ours / anomalib) |"
    lines = [header, "|" + "---|" * (len(columns) + 3)]
    for model in sorted({cell["model"] for cell in results.values()}):
        for batch in batches:
            cells = [results.get(cell_key(model, side, rt, batch)) for side, rt in columns]
            if not any(cells):
                continue
            text = [
                f"{c['images_per_s']:.1f}{' †' if c.get('busy') else ''}"
                + (f" (batch {c['batch_run']}: its graph's fixed size)" if c.get("batch_run", batch) != batch else "")
                if c
                else "—"
                for c in cells
            ]
            ours, theirs = cells[2] or cells[0], cells[3]
            quality = " / ".join(
                f"{c['image_auroc']:.3f}" if c and c.get("image_auroc") is not None else "—" for c in (ours, theirs)
            )
            lines.append(f"| {model} | {batch} | " + " | ".join(text) + f" | {quality} |")
    busy = any(c.get("busy") for c in results.values())
    if busy:
        lines.append(
            "\n† measured while other processes shared the CPU: the images/s are lower than on an idle machine."
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="all", help="all (every exportable model) or a comma list")
    parser.add_argument("--root", default=None, help="MVTec-layout root (default $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--images", type=int, default=32, help="test images timed per cell (default 32)")
    parser.add_argument("--batches", default="1,16", help="batch sizes (default 1,16)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime (default 2)")
    parser.add_argument("--train-steps", type=int, default=2, help="training steps of trained models (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--coreset-ratio",
        type=float,
        default=0.1,
        help="PatchCore's coreset sampling ratio on both sides (default 0.1, the paper's; anomalib's greedy coreset "
        "at 0.1 takes hours on 2 busy cores, 0.01 minutes)",
    )
    parser.add_argument("--anomalib-python", default=None, help="anomalib's venv python (default $ANOMALIB_PYTHON)")
    parser.add_argument("--no-anomalib", action="store_true", help="adlearn's runtimes only")
    parser.add_argument("--no-adlearn", action="store_true", help="anomalib's side only")
    parser.add_argument(
        "--out", default=None, help="results JSON (default benchmarks/results/side_by_side/export_<category>.json)"
    )
    parser.add_argument("--restart", action="store_true", help="forget the cells already in the results file")
    parser.add_argument(
        "--prepare", action="store_true", help="fit and cache the models only (build/bench_export/), time nothing"
    )
    parser.add_argument("--anomalib-side", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--anomalib-out", default=None, help=argparse.SUPPRESS)
    from adlearn.machine import add_arguments

    add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    if argv is None and "--anomalib-side" in sys.argv:  # anomalib's venv: no adlearn import
        index = sys.argv.index("--anomalib-side")
        return anomalib_side(sys.argv[index + 1], sys.argv[sys.argv.index("--anomalib-out") + 1])
    args = parse_args(argv)
    from adlearn.export import EXPORTABLE
    from adlearn.machine import guard_from_args

    args.batches = [int(b) for b in args.batches.split(",")]
    if not 0 < args.coreset_ratio <= 1:
        raise SystemExit(f"--coreset-ratio must be in (0, 1], got {args.coreset_ratio}")
    ANOMALIB_MODELS["patchcore"]["init"]["coreset_sampling_ratio"] = args.coreset_ratio  # both sides alike
    ADLEARN_OPTIONS["patchcore"]["coreset_sampling_ratio"] = args.coreset_ratio
    models = sorted(EXPORTABLE) if args.models == "all" else [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in EXPORTABLE]
    if unknown:
        raise SystemExit(f"not exportable: {unknown}; exportable models: {', '.join(sorted(EXPORTABLE))}")
    root = mvtec_root(args.root)
    out = Path(args.out) if args.out else RESULTS / f"export_{args.category}.json"
    stored = {} if args.restart or not out.is_file() else json.loads(out.read_text())
    results = stored.get("cells", {})
    guard = guard_from_args(args).activate()

    def save():
        write_json(
            out,
            {"threads": args.threads, "images": args.images, "machine": guard.summary()["machine"], "cells": results},
        )

    if args.prepare:  # the slow part alone (anomalib's PatchCore coreset: half an hour and more on one core)
        for name in models:
            if not args.no_adlearn:
                cached_model(name, root, args.category, args.train_steps, args.seed)
            if not args.no_anomalib:
                anomalib_cells(name, args, root, results, guard, save, prepare_only=True)
        return 0
    for name in models:
        if not args.no_adlearn:
            adlearn_cells(name, args, root, results, guard, save)
        if not args.no_anomalib:
            anomalib_cells(name, args, root, results, guard, save)
    print(table(results))
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
