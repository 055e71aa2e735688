"""The defect playground: painting checked pixel by pixel, scoring against the models' own predict, and the
live view driven headlessly (the browser test in tests/test_jupyterlab.py drives it with a mouse)."""

from __future__ import annotations

import numpy as np
import pytest

from adlearn.widgets.playground import paint, playground_static_figure, score_image, stroke_mask, stroke_points


def brute_force_mask(shape, points, radius):
    mask = np.zeros(shape, dtype=bool)
    for row in range(shape[0]):
        for col in range(shape[1]):
            mask[row, col] = any((col - x) ** 2 + (row - y) ** 2 <= radius**2 for x, y in points)
    return mask


def test_stroke_mask_is_the_union_of_discs():
    points = [(3.0, 4.0), (10.5, 7.0)]
    assert np.array_equal(stroke_mask((12, 16), points, 2.5), brute_force_mask((12, 16), points, 2.5))


def test_stroke_points_fill_fast_drags():
    dense = stroke_points([(0, 0), (20, 0)], radius=4)
    gaps = np.diff([x for x, _ in dense])
    assert dense[0] == (0.0, 0.0) and dense[-1] == (20.0, 0.0) and gaps.max() <= 2.0 + 1e-9


def test_paint_colour_texture_and_eraser():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    texture = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    mask = brute_force_mask((20, 24), stroke_points([(5, 5), (15, 10)], 3), 3)
    red = paint(original, original, [(5, 5), (15, 10)], 3, mode="colour", colour=(255, 0, 0))
    assert (red[mask] == [255, 0, 0]).all() and np.array_equal(red[~mask], original[~mask])
    patched = paint(original, original, [(5, 5), (15, 10)], 3, mode="texture", texture=texture)
    assert np.array_equal(patched[mask], texture[mask]) and np.array_equal(patched[~mask], original[~mask])
    erased = paint(red, original, [(5, 5), (15, 10)], 3, mode="eraser")
    assert np.array_equal(erased, original)
    with pytest.raises(ValueError, match="mode must be one of"):
        paint(original, original, [(1, 1)], 2, mode="spray")
    with pytest.raises(ValueError, match="needs a texture"):
        paint(original, original, [(1, 1)], 2, mode="texture")


@pytest.fixture(scope="module")
def fitted_padim(small_synthetic_root):
    import adlearn
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset

    model = adlearn.create("padim", backbone="efficientnet_lite0", image_size=64, n_features=20, device="cpu")
    train = MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], "train", transform=model.transform)
    return model.fit(train)


def test_score_image_is_the_models_predict(fitted_padim):
    import torch

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    got = score_image({"padim": fitted_padim}, image)["padim"]
    expected = fitted_padim.predict(fitted_padim.transform(image)[None])
    assert got["score"] == pytest.approx(float(expected.pred_score[0]))
    assert got["map"].shape == (64, 64)
    assert np.allclose(got["map"], expected.anomaly_map[0].numpy(), atol=1e-4)  # same size: no resampling
    assert torch.is_tensor(expected.pred_score)


def test_live_view_rescores_a_stroke_and_the_mouse_paints_the_same(fitted_padim, small_synthetic_root):
    pytest.importorskip("ipycanvas")
    from PIL import Image

    from adlearn.data import SYNTHETIC_CATEGORIES
    from adlearn.widgets import DefectPlayground

    good = sorted((small_synthetic_root / SYNTHETIC_CATEGORIES[0] / "test" / "good").iterdir())[0]
    image = np.asarray(Image.open(good).convert("RGB"))
    view = DefectPlayground(image, {"padim": fitted_padim}, thresholds={"padim": 1e9})
    before = view.readouts["padim"]
    assert "→ good" in before
    scores = view.stroke([(20, 20), (44, 40)])
    assert scores["padim"]["score"] > view.clean_scores["padim"]
    assert view.readouts["padim"] != before
    by_hand = paint(
        view.original, view.original, [(20, 20), (44, 40)], view.controls["radius"].value, colour=(200, 30, 30)
    )
    assert np.array_equal(view.image, by_hand)
    view.reset()
    view._down(20, 20), view._move(32, 30), view._up(44, 40)  # what the canvas sends while dragging
    assert np.array_equal(view.image, paint(view.original, view.original, [(20, 20), (32, 30), (44, 40)], 6))
    figure = playground_static_figure(image, {"padim": fitted_padim}, [{"points": [(20, 20), (44, 40)], "radius": 6}])
    assert len(figure.axes) == 4
