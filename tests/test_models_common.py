"""Steps the models share (`adlearn.models.common`), against hand-written formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _old_layer_map_formulas():
    """The three loops the models wrote before `combine_layer_maps` existed, copied out by hand."""

    def stfpm(maps, size):  # multiply, align_corners=False
        out = None
        for m in maps:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            out = m if out is None else out * m
        return out

    def reverse_distillation(maps, size, mode):  # add or multiply, align_corners=True
        out = None
        for m in maps:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=True)
            out = m if out is None else (out + m if mode == "add" else out * m)
        return out

    def fastflow(maps, size):  # mean of the stacked maps
        ups = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        return torch.cat(ups, dim=1).mean(dim=1)

    return stfpm, reverse_distillation, fastflow


def test_combine_layer_maps_is_bit_identical_to_the_models_old_loops():
    from adlearn.models.common import combine_layer_maps

    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(3, 1, side, side, generator=generator) for side in (16, 8, 4)]
    stfpm, reverse_distillation, fastflow = _old_layer_map_formulas()
    size = (64, 64)
    assert torch.equal(combine_layer_maps(maps, size, "multiply"), stfpm(maps, size))
    assert torch.equal(
        combine_layer_maps(maps, size, "add", align_corners=True), reverse_distillation(maps, size, "add")
    )
    assert torch.equal(
        combine_layer_maps(maps, size, "multiply", align_corners=True), reverse_distillation(maps, size, "multiply")
    )
    assert torch.equal(combine_layer_maps([-m for m in maps], size, "mean")[:, 0], fastflow([-m for m in maps], size))


def test_combine_layer_maps_by_hand():
    from adlearn.models.common import combine_layer_maps

    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]  # (1, 1, 2, 2)
    b = torch.full((1, 1, 1, 1), 2.0)  # one value: upsampled to a constant
    assert torch.equal(combine_layer_maps([a, b], (2, 2), "add"), a + 2)
    assert torch.equal(combine_layer_maps([a, b], (2, 2), "multiply"), a * 2)
    assert torch.equal(combine_layer_maps([a, b], (2, 2), "mean"), (a + 2) / 2)
    # align_corners=True keeps the small map's corners at the big map's corners
    big = combine_layer_maps([a], (5, 5), "add", align_corners=True)[0, 0]
    assert big[0, 0] == 1 and big[0, -1] == 2 and big[-1, 0] == 3 and big[-1, -1] == 4 and big[2, 2] == 2.5
    with pytest.raises(ValueError, match="'add', 'multiply', 'mean'"):
        combine_layer_maps([a], (2, 2), "max")
    with pytest.raises(ValueError, match="at least one"):
        combine_layer_maps([], (2, 2), "add")
