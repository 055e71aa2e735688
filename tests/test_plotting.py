"""Figures build headless, with the expected axes and data; the text table is aligned."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from adlearn.metrics import image_auroc, pixel_auroc
from adlearn.plotting import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    anomaly_map_grid,
    denormalize,
    metrics_table,
    roc_figure,
)


@pytest.fixture
def batch():
    """4 images of 32x32, ImageNet-normalized, two of them with a square defect."""
    rng = np.random.default_rng(0)
    raw = rng.random((4, 3, 32, 32))  # [0, 1]
    mean = np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET_STD).reshape(1, 3, 1, 1)
    images = torch.tensor((raw - mean) / std, dtype=torch.float32)
    masks = np.zeros((4, 32, 32), np.float32)
    masks[2, 5:12, 5:12] = 1
    masks[3, 20:30, 2:8] = 1
    maps = (rng.random((4, 32, 32)) + 2.0 * masks).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    scores = maps.reshape(4, -1).max(axis=1)
    return dict(raw=raw, images=images, masks=masks, maps=maps, labels=labels, scores=scores)


def _heat_images(fig, n_rows, n_cols):
    """The heatmap (last image drawn) of each axes in the last row of the grid."""
    grid_axes = fig.axes[: n_rows * n_cols]  # the colour bar's axes comes last
    return [ax.images[-1] for ax in grid_axes[(n_rows - 1) * n_cols :]]


def test_anomaly_map_grid_layout_data_and_file(batch, tmp_path):
    path = tmp_path / "out" / "grid.png"
    fig = anomaly_map_grid(
        batch["images"],
        torch.tensor(batch["maps"]),
        masks=batch["masks"],
        scores=batch["scores"],
        labels=batch["labels"],
        title="demo",
        path=path,
    )
    assert len(fig.axes) == 3 * 4 + 1  # image / ground truth / anomaly map rows, plus colour bar
    heat = _heat_images(fig, 3, 4)
    for i, image in enumerate(heat):
        np.testing.assert_array_equal(np.asarray(image.get_array()), batch["maps"][i])
        # one shared colour scale over all shown maps
        assert image.get_clim() == pytest.approx((batch["maps"].min(), batch["maps"].max()))
    assert "shared scale" in fig.axes[-1].get_ylabel()
    assert fig.get_suptitle() == "demo"
    assert "anomalous" in fig.axes[3].get_title() and "score" in fig.axes[3].get_title()
    # ground-truth outlines only where there is a defect
    assert len(fig.axes[4 + 2].collections) > 0 and len(fig.axes[4 + 0].collections) == 0
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_anomaly_map_grid_without_masks_and_with_n(batch):
    fig = anomaly_map_grid(batch["images"], batch["maps"], n=2)
    assert len(fig.axes) == 2 * 2 + 1  # image and anomaly-map rows only
    heat = _heat_images(fig, 2, 2)
    np.testing.assert_array_equal(np.asarray(heat[1].get_array()), batch["maps"][1])
    assert heat[0].get_clim() == pytest.approx((batch["maps"][:2].min(), batch["maps"][:2].max()))
    assert len(anomaly_map_grid(batch["images"], batch["maps"], n=50).axes) == 2 * 4 + 1


def test_anomaly_map_grid_shows_denormalized_images(batch):
    fig = anomaly_map_grid(batch["images"], batch["maps"], n=1)
    shown = np.asarray(fig.axes[0].images[0].get_array())  # (H, W, 3)
    np.testing.assert_allclose(shown, batch["raw"][0].transpose(1, 2, 0), atol=1e-6)


def test_anomaly_map_grid_rejects_mismatched_maps(batch):
    with pytest.raises(ValueError, match="maps must have shape"):
        anomaly_map_grid(batch["images"], batch["maps"][:, :16])


def test_denormalize_detects_the_value_range(batch):
    np.testing.assert_allclose(denormalize(batch["images"]), batch["raw"].transpose(0, 2, 3, 1), atol=1e-6)
    np.testing.assert_allclose(denormalize(batch["raw"]), batch["raw"].transpose(0, 2, 3, 1))
    # an explicit flag wins over the guess
    forced = denormalize(np.zeros((1, 3, 2, 2)), normalized=True)
    np.testing.assert_allclose(forced[0, 0, 0], IMAGENET_MEAN)
    assert denormalize(np.zeros((2, 1, 4, 4))).shape == (2, 4, 4, 1)  # grayscale
    with pytest.raises(ValueError, match="N, 3, H, W"):
        denormalize(np.zeros((2, 4, 4, 3)))


def test_roc_figure_image_only(batch, tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + labels
    fig = roc_figure(labels, scores, path=tmp_path / "roc.svg")
    assert len(fig.axes) == 1
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == f"AUROC = {image_auroc(labels, scores):.3f}"
    assert (tmp_path / "roc.svg").read_text().lstrip().startswith("<?xml")


def test_roc_figure_with_pixels(batch):
    fig = roc_figure(batch["labels"], batch["scores"], batch["masks"], batch["maps"])
    assert len(fig.axes) == 2
    pixel_legend = fig.axes[1].get_legend().get_texts()[0].get_text()
    assert pixel_legend == f"AUROC = {pixel_auroc(batch['masks'], batch['maps']):.3f}"
    assert fig.axes[1].get_title() == "Pixel-level ROC"


def test_roc_figure_thins_long_curves():
    rng = np.random.default_rng(2)
    masks = rng.random((4, 64, 64)) < 0.05
    maps = rng.random((4, 64, 64)) + masks
    fig = roc_figure(masks.reshape(4, -1).max(1) * [0, 1, 1, 1], maps.reshape(4, -1).max(1), masks, maps)
    x, y = fig.axes[1].lines[0].get_data()
    assert len(x) <= 2000 and (x[0], y[0]) == (0, 0) and (x[-1], y[-1]) == (1, 1)


def test_metrics_table_alignment_and_missing_values():
    results = [
        {
            "model": "padim",
            "category": "bottle",
            "image_auroc": 0.99512,
            "pixel_auroc": 0.981,
            "pixel_aupro": 0.93,
            "image_f1max": 0.97,
            "fit_seconds": 12.34,
            "predict_seconds": 3.2,
            "images_per_second": 25.0,
            "peak_memory_mb": 812.4,
        },
        {
            "model": "patchcore",
            "category": "bottle",
            "image_auroc": 1.0,
            "pixel_auroc": None,
            "pixel_aupro": float("nan"),
        },
    ]
    table = metrics_table(results)
    lines = table.splitlines()
    assert len(lines) == 4
    header = lines[0]
    for column in [
        "model",
        "category",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "F1",
        "fit s",
        "predict s",
        "img/s",
        "peak MB",
    ]:
        assert column in header
    assert set(lines[1]) <= {"-", " "}
    assert "0.995" in lines[2] and "812" in lines[2] and "12.3" in lines[2]
    assert lines[3].count("—") == 7  # pixel AUROC, AUPRO (nan), F1, fit, predict, img/s, MB
    # numbers are right-aligned: each column ends where its header ends
    end = header.index("image AUROC") + len("image AUROC")
    assert lines[2][end - 5 : end] == "0.995" and lines[3][end - 5 : end] == "1.000"
    # text columns are left-aligned
    assert lines[2].index("bottle") == lines[3].index("bottle") == header.index("category")


def test_metrics_table_single_and_nested_dict():
    table = metrics_table(
        {
            "model": "dfm",
            "category": "x",
            "metrics": {"image_auroc": 0.5, "pixel_aupro": 0.25},
            "timing": {"fit_seconds": 1.0},
        }
    )
    row = table.splitlines()[2]
    assert row.startswith("dfm") and "0.500" in row and "0.250" in row and "1.0" in row


def test_plotting_imports_matplotlib_lazily_and_runs_headless(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    code = (
        "import sys, numpy as np\n"
        "import adlearn.plotting as p\n"
        "assert 'matplotlib' not in sys.modules\n"
        "fig = p.roc_figure([0, 1, 1], [0.1, 0.7, 0.4], path=sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules  # no pyplot state, no GUI window\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.png")], check=True, env=env)
    assert (tmp_path / "r.png").stat().st_size > 1000
