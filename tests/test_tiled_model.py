"""`adlearn.models.tiled.TiledModel`: any model run on tiles, its maps stitched back.

The stitched map is checked against the wrapped model's own per-tile maps, cut and averaged here by
explicit loops (not with the `Tiler` under test); save/load, seeds, options (``tiling=`` through
``adlearn.create``, a preset and ``adlearn evaluate --set``), the tiled ensemble and the errors.
"""

from __future__ import annotations

import json

import pytest
import torch

import adlearn
from adlearn.cli import main
from adlearn.data import ImageTransform, MVTecDataset
from adlearn.models.tiled import TiledDataset, TiledModel
from adlearn.options import OptionError, resolve_options

LITE0 = "efficientnet_lite0"
PADIM = dict(backbone=LITE0, n_features=10, device="cpu", seed=0)
PATCHCORE = dict(backbone=LITE0, device="cpu", seed=0)


@pytest.fixture(scope="module")
def images():
    """Eight smooth random 64-px images (normalized range), the last four with a bright square."""
    generator = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(8, 3, 72, 72, generator=generator), 9, stride=1)  # (8,3,64,64)
    base[4:, :, 40:46, 10:16] += 3.0
    return base


def stitched_by_hand(model: TiledModel, images: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
    """Cut every tile with slicing, predict it with the member that owns its position, and average the
    per-tile maps pixel by pixel over the tiles that cover the pixel."""
    batch, _, height, width = images.shape
    corners = [
        (top, left) for top in range(0, height - tile + 1, stride) for left in range(0, width - tile + 1, stride)
    ]
    total = torch.zeros(batch, height, width)
    count = torch.zeros(height, width)
    for k, (top, left) in enumerate(corners):
        member = model.members[k] if model.tiling_ensemble else model.model
        tile_map = member.predict(images[:, :, top : top + tile, left : left + tile]).anomaly_map  # (B, t, t)
        total[:, top : top + tile, left : left + tile] += tile_map
        count[top : top + tile, left : left + tile] += 1
    return total / count


def test_a_tiled_model_is_the_wrapped_model_on_tiles_stitched(images):
    model = adlearn.create("padim", image_size=64, tiling=(32, 16), **PADIM)
    assert isinstance(model, TiledModel) and model.name == "padim_tiled" and model.n_tiles == 9
    assert model.model.input_size == (32, 32) and model.input_size == (64, 64)  # the model is set up for tiles
    assert model.transform == ImageTransform(image_size=64)  # the dataset keeps the full resolution
    assert model.model.batch_size == 32 and model.batch_size == 3  # batches of 32 tiles: 3 images of 9 tiles
    model.fit(images[:4])
    # the wrapped model saw the 36 tiles of the 4 training images: its statistics are theirs
    alone = adlearn.create("padim", image_size=32, **PADIM).fit(model.tiles_of(images[:4]))
    torch.testing.assert_close(alone.gaussian.mean, model.model.gaussian.mean)
    prediction = model.predict(images)
    expected = stitched_by_hand(model, images, 32, 16)
    assert prediction.anomaly_map.shape == (8, 64, 64)
    torch.testing.assert_close(prediction.anomaly_map, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prediction.pred_score, expected.flatten(1).amax(1))  # score: the map's maximum
    assert prediction.pred_score[4:].min() > prediction.pred_score[:4].max()  # the squares are found


def test_the_tiled_ensemble_has_one_model_per_position_each_fitted_on_its_tiles(images):
    model = adlearn.create("patchcore", image_size=64, tiling=(32, 32), tiling_ensemble=True, **PATCHCORE)
    assert len(model.members) == 4
    model.fit(images[:4])
    for k, member in enumerate(model.members):  # member k's bank: its position's patches only
        alone = adlearn.create("patchcore", image_size=32, **PATCHCORE)
        alone.fit(model.tiles_of(images[:4], position=k))
        assert torch.equal(alone.memory_bank, member.memory_bank)
    assert not torch.equal(model.members[0].memory_bank, model.members[3].memory_bank)
    prediction = model.predict(images)
    torch.testing.assert_close(prediction.anomaly_map, stitched_by_hand(model, images, 32, 32), rtol=1e-5, atol=1e-5)


def test_an_image_level_model_scores_an_image_by_its_highest_tile_score(images):
    model = adlearn.create("dfkde", image_size=64, tiling=(32, 32), n_pca_components=4, **PATCHCORE)
    assert model.task == "classification"
    model.fit(images[:4])  # 16 training tiles
    prediction = model.predict(images)
    assert prediction.anomaly_map is None
    corners = model.tiler.positions(64, 64)
    tile_scores = torch.stack(
        [model.model.predict(images[:, :, top : top + 32, left : left + 32]).pred_score for top, left in corners], 1
    )  # (B, 4)
    torch.testing.assert_close(prediction.pred_score, tile_scores.amax(1))


def test_saved_tiled_models_load_back_identically_and_the_seed_repeats(images, tmp_path):
    for options in (dict(tiling=(32, 16)), dict(tiling=(32, 32, "reflect"), tiling_ensemble=True)):
        model = adlearn.create("padim", image_size=64, **PADIM, **options).fit(images[:4])
        before = model.predict(images)
        loaded = adlearn.models.load(model.save(tmp_path / "tiled.pt"))
        assert type(loaded) is TiledModel and loaded.config == model.config
        assert torch.equal(loaded.predict(images).anomaly_map, before.anomaly_map)
        again = adlearn.create("padim", image_size=64, **PADIM, **options).fit(images[:4])
        assert torch.equal(again.predict(images).anomaly_map, before.anomaly_map)


def test_a_trained_model_trains_on_the_tiles_of_a_dataset(datasets_64):
    train, test = datasets_64
    model = adlearn.create("stfpm", image_size=64, tiling=(32, 32), backbone=LITE0, max_steps=2, batch_size=4)
    assert model.model.input_size == (32, 32) and model.task == "segmentation"
    model.fit(train)
    assert len(model.model.history.loss) >= 1  # it trained
    results = adlearn.evaluate(model, test)
    assert results["model"] == "stfpm_tiled" and 0 <= results["pixel_auroc"] <= 1


def test_tiled_dataset_cuts_images_and_masks_alike(synthetic_split):
    dataset, _ = synthetic_split(ImageTransform(image_size=64), "test")
    model = adlearn.create("padim", image_size=64, tiling=(32, 16), **PADIM)
    tiles = TiledDataset(dataset, model.tiler, (64, 64))
    assert len(tiles) == 9 * len(dataset)
    index = len(dataset) - 1  # a defective image: its mask is not empty
    item = dataset[index]
    for k, (top, left) in enumerate(model.tiler.positions(64, 64)):
        tile = tiles[index * 9 + k]
        assert torch.equal(tile["image"], item["image"][:, top : top + 32, left : left + 32])
        assert torch.equal(tile["mask"], item["mask"][top : top + 32, left : left + 32])
        assert tile["label"] == item["label"] and tile["image_path"] == item["image_path"]
    only = TiledDataset(dataset, model.tiler, (64, 64), position=4)
    assert len(only) == len(dataset) and torch.equal(only[index]["image"], tiles[index * 9 + 4]["image"])
    small, _ = synthetic_split(ImageTransform(image_size=48), "train")
    with pytest.raises(ValueError, match=r"gives 48x48 images, but the tiled model cuts 64x64.*model.transform"):
        model.fit(small)


def test_tiling_is_an_option_of_every_model_resolved_like_the_others(monkeypatch):
    assert "tiling" not in resolve_options("padim", "cpu")  # unset: not there, the model's own options only
    resolved = resolve_options("padim", "cpu", {"tiling": (128, 64)})
    assert resolved["tiling"] == (128, 64) and "tiling_ensemble" not in resolved
    # a preset may set it; explicit options win over it
    padim = adlearn.models.get_model_class("padim")
    monkeypatch.setitem(padim.presets, "tiles", {"backbone": LITE0, "tiling": (32, 16)})
    model = adlearn.create("padim", preset="tiles", image_size=64, device="cpu", pretrained="none")
    assert isinstance(model, TiledModel) and model.config["tiling"] == (32, 16)
    model = adlearn.create("padim", preset="tiles", image_size=64, device="cpu", pretrained="none", tiling=None)
    assert not isinstance(model, TiledModel)


def test_bad_tiling_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"tiling=\(48, 32\) on 64x64 images: tiles of 48 px every 32 px do not cover"):
        adlearn.create("padim", image_size=64, tiling=(48, 32), **PADIM)
    with pytest.raises(OptionError, match=r"padim: tiling_ensemble=True needs tiling=\(tile_size, stride\)"):
        adlearn.create("padim", tiling_ensemble=True, **PADIM)
    with pytest.raises(ValueError, match=r"tiling='big': give tiling=\(tile_size, stride\)"):
        adlearn.create("padim", image_size=64, tiling="big", **PADIM)
    with pytest.raises(OptionError, match=r"unknown option 'tilling' \(did you mean 'tiling'\?\)"):
        adlearn.create("padim", tilling=(32, 16), **PADIM)
    with pytest.raises(ValueError, match=r"stride 40 is larger than the tile's height 32"):
        adlearn.create("padim", image_size=64, tiling=(32, 40, "constant"), **PADIM)


def test_evaluate_runs_a_model_tiled_from_the_command_line(small_synthetic_root, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = ["evaluate", "padim", "--root", str(small_synthetic_root), "--category", "weave"]
    argv += ["--backbone", LITE0, "--image-size", "64", "--device", "cpu", "--json", str(out)]
    argv += ["--set", "n_features=10", "--set", "tiling=(32, 16)", "--save", str(tmp_path / "m.pt")]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["model"] == "padim_tiled" and results["config"]["tiling"] == [32, 16]
    assert results["image_size"] == 64 and 0 <= results["pixel_auroc"] <= 1
    loaded = adlearn.models.load(tmp_path / "m.pt")
    test = MVTecDataset(small_synthetic_root, "weave", "test", transform=loaded.transform)
    assert adlearn.evaluate(loaded, test)["pixel_auroc"] == pytest.approx(results["pixel_auroc"], abs=1e-12)
