"""Helpers that keep every notebook's set-up to two short cells (top layer: notebooks only).

    device = setup(seed=seed, device=device)                # seeds everything, prints device + versions
    train, test, category = load_datasets(model.transform, data_root, category, smoke, seed)

``smoke=True`` shrinks the data so a notebook runs in under a minute on 2 CPU cores; ``smoke=False``
is the full experiment (the whole synthetic category, or real MVTec when ``data_root`` points at it).
"""

from __future__ import annotations

import platform

import torch
from torch.utils.data import Subset

# Sizes of the embedded synthetic data in smoke and full mode.
SMOKE_SIZES = {"n_train": 24, "n_test_good": 6, "n_test_defect": 12}
FULL_SIZES = {"n_train": 100, "n_test_good": 20, "n_test_defect": 40}
SMOKE_MAX_TRAIN_REAL = 32  # smoke runs on real data keep this many training images


def setup(seed: int = 0, device: str = "auto") -> torch.device:
    """Seed Python/NumPy/torch and print the device and library versions."""
    import timm

    import adlearn
    from adlearn.utils import resolve_device, seed_everything

    seed_everything(seed)
    resolved = resolve_device(device)
    name = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device: {resolved} ({name}) | adlearn {adlearn.__version__} | torch {torch.__version__} | "
        f"timm {timm.__version__} | python {platform.python_version()}"
    )
    return resolved


def load_datasets(
    transform, data_root=None, category=None, smoke: bool = True, seed: int = 0, generate_size: int = 256
):
    """(train, test, category): the synthetic data by default, real MVTec when ``data_root`` is set."""
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset, synthetic_root

    if data_root is None:
        sizes = SMOKE_SIZES if smoke else FULL_SIZES
        data_root = synthetic_root(image_size=generate_size, seed=seed, **sizes)
        category = category or SYNTHETIC_CATEGORIES[0]
    elif category is None:
        category = "bottle"
    train = MVTecDataset(data_root, category, split="train", transform=transform)
    test = MVTecDataset(data_root, category, split="test", transform=transform)
    if smoke and len(train) > SMOKE_MAX_TRAIN_REAL:
        step = len(train) / SMOKE_MAX_TRAIN_REAL
        train = Subset(train, [int(i * step) for i in range(SMOKE_MAX_TRAIN_REAL)])
    print(f"data: {category} — {len(train)} train / {len(test)} test images from {data_root}")
    return train, test, category


# Keys of `adlearn.evaluate`'s result that `report` prints (metrics, then cost); arrays are left out.
REPORT_KEYS = (
    "image_auroc",
    "image_f1max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_f1max",
    "fit_seconds",
    "predict_seconds",
    "images_per_second",
    "peak_memory_mb",
    "n_train",
    "n_test",
)


def report(results: dict, *, category=None, smoke=None, device=None, image_size=None, **extra) -> None:
    """Print the notebook's results as ONE line of JSON (the cell before the exercises of a model notebook).

    Every notebook calls it the same way, with its run's context and then any figures of its own::

        report(results, category=category, smoke=smoke, device=device, image_size=image_size, epochs=...)

    ``results`` is what `adlearn.evaluate` returned (optionally with ``fit_seconds``); ``device`` may be
    a ``torch.device`` (it prints as text). `adlearn.tools.run_notebooks` collects this line from every
    executed notebook into its results table (``timings.json``, ``results.md``). Metrics are rounded to
    4 decimals; NaN becomes ``null``; context left as ``None`` is not printed. Nothing is returned (the
    cell shows only the line).

    When the environment variable ``ADLEARN_REPORT_FILE`` names a file (``adlearn sweep`` sets it for
    each run), the same object is also written there as JSON: the run's recorded result.
    """
    import json
    import math
    import os
    from pathlib import Path

    line = {"model": results.get("model")}
    context = {"category": category, "smoke": smoke, "device": device, "image_size": image_size}
    line.update({key: value for key, value in context.items() if value is not None})
    line.update(extra)
    for key in REPORT_KEYS:
        value = results.get(key)
        if value is None:
            continue
        value = float(value)
        line[key] = None if math.isnan(value) else (int(value) if key.startswith("n_") else round(value, 4))
    text = json.dumps(line, default=str)  # default=str: a torch.device or a Path prints as text
    print(text)
    if os.environ.get("ADLEARN_REPORT_FILE"):
        path = Path(os.environ["ADLEARN_REPORT_FILE"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
