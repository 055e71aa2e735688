"""The synthetic generator's fine defects (``defects="fine"``): a few pixels wide at any resolution,
deterministic, exact masks, cached apart from the standard kind."""

from __future__ import annotations

import numpy as np
import pytest

from adlearn.data import DataError
from adlearn.data.synthetic import (
    FINE_DEFECT_TYPES,
    SCENES,
    defect_counts,
    defect_types,
    generate_synthetic_dataset,
    make_canvas,
    render_sample,
    sample_seed,
    synthetic_root,
)


def width_in_pixels(mask: np.ndarray) -> float:
    """A shape's largest width: twice the largest distance from one of its pixels to the outside."""
    from scipy.ndimage import distance_transform_edt

    return 2 * float(distance_transform_edt(mask).max())


@pytest.mark.parametrize("category", ["marble", "pill"])
def test_fine_defects_are_a_few_pixels_wide_at_any_size_with_exact_masks(category):
    for defect in FINE_DEFECT_TYPES:
        small, large = (render_sample(category, 0, "test", defect, size) for size in (256, 512))
        for sample in (small, large):
            assert np.array_equal(sample.mask, np.any(sample.image != sample.clean, axis=-1))  # exact mask
            assert 0 < sample.mask.sum() < 400  # a few hundred pixels at most, at 256 as at 512 px
            assert 2 <= width_in_pixels(sample.mask) <= 7  # a few pixels wide, at 256 as at 512 px
    # standard defects scale with the image: at 512 px a standard scratch is wider than a fine one
    standard = render_sample(category, 0, "test", "scratch" if category == "marble" else "crack", 512)
    assert width_in_pixels(standard.mask) > width_in_pixels(
        render_sample(category, 0, "test", "fine_scratch", 512).mask
    )


def test_fine_defects_are_deterministic_and_on_the_object():
    first = render_sample("ring", 3, "test", "fine_spot", 256, seed=1)
    again = render_sample("ring", 3, "test", "fine_spot", 256, seed=1)
    assert np.array_equal(first.image, again.image)
    # the defect lies on the metal, not on the background or in the hole: most of it is on full support
    scene_seed = sample_seed(1, "ring", "test", "fine_spot", 3).spawn(3)[0]
    support = SCENES["ring"](make_canvas(256), np.random.default_rng(scene_seed)).support
    assert (support[first.mask] >= 0.99).mean() > 0.8


def test_the_fine_kind_has_its_own_folders_and_cache(tmp_path, monkeypatch):
    assert defect_types("weave", "fine") == FINE_DEFECT_TYPES and defect_types("weave") == (
        "color",
        "hole",
        "stain",
        "thread",
    )
    assert defect_counts("pill", 7, "fine") == {"fine_crack": 3, "fine_scratch": 2, "fine_spot": 2}
    with pytest.raises(DataError, match=r"defects='tiny' is not a kind of defect; use one of \('standard', 'fine'\)"):
        generate_synthetic_dataset(tmp_path, "pill", 64, defects="tiny")
    with pytest.raises(DataError, match=r"unknown defect 'dent'.*the fine kind's"):
        render_sample("pill", 0, "test", "dent")
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path / "cache"))
    root = synthetic_root(image_size=64, n_train=1, n_test_good=1, n_test_defect=3, defects="fine", categories="pill")
    assert root.name.endswith("-fine-pill") and sorted(p.name for p in root.iterdir() if p.is_dir()) == ["pill"]
    assert sorted(p.name for p in (root / "pill" / "test").iterdir()) == sorted(("good", *FINE_DEFECT_TYPES))
    assert (
        synthetic_root(image_size=64, n_train=1, n_test_good=1, n_test_defect=3, defects="fine", categories="pill")
        == root
    )
