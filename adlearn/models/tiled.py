"""Any model, run tiled: fit on tiles, predict per tile, stitch the maps back (`TiledModel`).

Rolih et al., "Divide and conquer: high-resolution industrial anomaly detection via memory efficient
tiled ensemble" (CVPR-W 2024). Reference implementations: ``anomalib.data.utils.tiler`` (tiling inside
one model) and ``anomalib.pipelines.tiled_ensemble`` (one model per tile position).

A model built for 256-px inputs meets a 1,024-px image. Resizing it to 256 px shrinks a defect a few
pixels wide below one pixel: it is blurred into its surroundings before the model sees it. Tiling
keeps the full resolution instead (Sec. 3.1):

1. Cut every image into tiles of the model's input size (`adlearn.components.Tiler`: ``tile_size``,
   ``stride`` — overlapping when the stride is smaller — and a padding mode).
2. Fit the model on the tiles of the training images, as if each tile were an image. With
   ``tiling_ensemble=True`` there is one model per tile *position* (Sec. 3.2, the tiled ensemble),
   each fitted on the tiles at its position only: objects look different in each corner, and each
   member learns its own part.
3. Predict every tile of a test image; stitch the per-tile anomaly maps back into a full-resolution
   map, averaging where tiles overlap (Sec. 3.3, the reference's ``untile``).
4. The image score is the **maximum of the stitched map** (`adlearn.models.common.prediction_from_map`),
   so it agrees with the map a reader sees. (The reference's ensemble merges the members' image scores
   by their mean; the stitched map's maximum is the same rule every other map model here uses.) An
   image-level model (no map) scores an image by its highest tile score.

The wrapped model knows nothing of this: it is built, through the registry, with ``image_size`` set to
the tile size (and no center crop — the crop, if any, applies to the full image), so every
size-dependent part (flows, positional encodings, quantile statistics) is set up for tiles.

    model = adlearn.create("patchcore", preset="cpu", image_size=1024, tiling=(256, 128))
    model.transform          # ImageTransform(1024): the dataset keeps the full resolution
    model.fit(train)         # PatchCore's memory bank holds the patches of every tile
    model.predict(images)    # images (B, 3, 1024, 1024) -> maps (B, 1024, 1024)

The cost: a 1,024-px image in 256-px tiles with stride 128 is 49 tiles — 49 times the features of one
resized image to extract, and (PatchCore) a 49 times larger memory bank to search.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlearn.components.tiler import Tiler
from adlearn.models.base import CHECKPOINT_FORMAT, AnomalyModel, Prediction
from adlearn.models.common import prediction_from_map, resolve_center_crop


def parse_tiling(tiling) -> tuple:
    """``tiling``: ``tile_size``, ``(tile_size, stride)`` or ``(tile_size, stride, padding)`` ->
    ``(tile_size, stride, padding)`` (stride defaults to the tile size, padding to ``"none"``)."""
    parts = (tiling,) if isinstance(tiling, int) and not isinstance(tiling, bool) else tiling
    if not isinstance(parts, (tuple, list)) or not 1 <= len(parts) <= 3:
        raise ValueError(
            f"tiling={tiling!r}: give tiling=(tile_size, stride), e.g. tiling=(256, 128), "
            "or (tile_size, stride, padding) with padding 'none', 'constant', 'reflect' or 'replicate'"
        )
    tile_size = parts[0]
    stride = parts[1] if len(parts) > 1 else tile_size
    padding = parts[2] if len(parts) > 2 else "none"
    return tile_size, stride, padding


class TiledDataset(Dataset):
    """The tiles of a dataset's images, as a dataset of the same dict items (``image`` and ``mask`` cut
    to the tile; ``label``, ``defect_type``, ``image_path`` kept).

    Item ``i·N + k`` is tile ``k`` of image ``i`` (N tiles per image); with ``position=k`` only tile
    ``k`` of every image (one member of a tiled ensemble). The last image read is kept, so reading in
    order decodes each image once."""

    def __init__(self, dataset, tiler: Tiler, image_size: tuple[int, int], position: int | None = None):
        self.dataset, self.tiler, self.image_size, self.position = dataset, tiler, tuple(image_size), position
        self.n_tiles = tiler.n_tiles(*image_size)
        self._cached: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return len(self.dataset) * (1 if self.position is not None else self.n_tiles)

    def _tiled_item(self, index: int) -> dict:
        if self._cached is None or self._cached[0] != index:
            item = self.dataset[index]
            image = item["image"] if isinstance(item, dict) else item
            if tuple(image.shape[-2:]) != self.image_size:
                raise ValueError(
                    f"the dataset gives {image.shape[-2]}x{image.shape[-1]} images, but the tiled model cuts "
                    f"{self.image_size[0]}x{self.image_size[1]} images: build the dataset with model.transform"
                )
            tiled = {"image": self.tiler.tile(image[None])}  # (N, 3, th, tw)
            if isinstance(item, dict):
                if "mask" in item:
                    tiled["mask"] = self.tiler.tile(item["mask"][None, None].float())[:, 0]  # (N, th, tw)
                tiled.update({key: value for key, value in item.items() if key not in tiled})
            self._cached = (index, tiled)
        return self._cached[1]

    def __getitem__(self, index: int) -> dict:
        image_index, k = (index, self.position) if self.position is not None else divmod(index, self.n_tiles)
        tiled = self._tiled_item(image_index)
        return {key: value[k] if key in ("image", "mask") else value for key, value in tiled.items()}


def _accepts(model_class, option: str) -> bool:
    return option in inspect.signature(model_class.__init__).parameters


class TiledModel(AnomalyModel):
    """A registered model run on tiles (see the module docstring).

    Args:
        tiled_model: the registered name of the model to run tiled (``"patchcore"``).
        tiling: ``(tile_size, stride)`` or ``(tile_size, stride, padding)`` (`adlearn.components.Tiler`).
        tiling_ensemble: one model per tile position instead of one model for all tiles.
        **options: the model's own options; ``image_size`` (and ``center_crop``) are the full image's.
    """

    name = "tiled"  # its checkpoints say "tiled"; instances are named after the model they run

    def __init__(self, tiled_model: str, tiling=(256, 256), tiling_ensemble: bool = False, **options):
        from adlearn.models.registry import get_model_class

        model_class = get_model_class(tiled_model)
        image_size = options.get("image_size", inspect.signature(model_class.__init__).parameters["image_size"].default)
        center_crop = resolve_center_crop(image_size, options.get("center_crop"))
        super().__init__(
            image_size=image_size,
            center_crop=center_crop,
            device=options.get("device", "auto"),
            seed=options.get("seed", 0),
            batch_size=options.get("batch_size", 32),
        )
        tile_size, stride, padding = parse_tiling(tiling)
        self.tiler = Tiler(tile_size, stride, padding)
        try:
            self.n_tiles = self.tiler.n_tiles(*self.input_size)  # N per image
        except ValueError as error:
            raise ValueError(
                f"tiling={tiling!r} on {self.input_size[0]}x{self.input_size[1]} images: {error}"
            ) from None
        self.tiling_ensemble = bool(tiling_ensemble)
        # The wrapped model sees tiles: its image size is the tile's, and it crops nothing.
        tile_options = {**options, "image_size": tile_size if isinstance(tile_size, int) else tuple(tile_size)}
        if _accepts(model_class, "center_crop"):
            tile_options["center_crop"] = None
        n_members = self.n_tiles if self.tiling_ensemble else 1
        self.members = nn.ModuleList([model_class(**tile_options) for _ in range(n_members)])
        # ``batch_size`` is the wrapped model's, in tiles; a batch of whole images makes about one such batch
        self.batch_size = max(1, self.members[0].batch_size // self.n_tiles)
        self.name = f"{self.members[0].name}_tiled"
        self.task = self.members[0].task
        self.config = {"tiled_model": tiled_model, **options, "tiling": tiling, "tiling_ensemble": tiling_ensemble}

    @property
    def model(self) -> AnomalyModel:
        """The wrapped model (the first member of a tiled ensemble)."""
        return self.members[0]

    # ----------------------------------------------------------------- step 1: the tiles of the data
    def tiles_of(self, data, position: int | None = None):
        """The training tiles: a tensor of tiles for an image tensor, a `TiledDataset` for a dataset
        (or a DataLoader's dataset); ``position=k``: only tile k of every image."""
        if isinstance(data, torch.Tensor):
            self.check_images(data)
            tiles = self.tiler.tile(data)  # (B·N, 3, th, tw)
            if position is None:
                return tiles
            return tiles.reshape(len(data), self.n_tiles, *tiles.shape[1:])[:, position]  # (B, 3, th, tw)
        if isinstance(data, DataLoader):
            data = data.dataset
        if not isinstance(data, Dataset):
            raise TypeError(f"{self.name}.fit expects an image tensor, a Dataset or a DataLoader, got {type(data)}")
        return TiledDataset(data, self.tiler, self.input_size, position)

    # ----------------------------------------------------------------- step 2: fit on tiles
    def fit(self, data, val_data=None) -> TiledModel:
        """Fit the model on every tile (or each ensemble member on its position's tiles); ``val_data``
        (a trained model's validation images, full size) is tiled the same way."""
        self.to_device()
        for k, member in enumerate(self.members):
            position = k if self.tiling_ensemble else None
            extra = {} if val_data is None else {"val_data": self.tiles_of(val_data, position)}
            member.fit(self.tiles_of(data, position), **extra)
        self.mark_fitted()
        return self

    # ----------------------------------------------------------------- steps 3-4: predict per tile, stitch
    def predict_tiles(self, tiles: torch.Tensor, n_images: int) -> Prediction:
        """Per-tile predictions of (B·N, 3, th, tw) tiles, in the tiles' order."""
        if not self.tiling_ensemble:
            parts = [self.model.predict(chunk) for chunk in tiles.split(self.model.batch_size)]
            return _concatenate(parts)
        by_position = tiles.reshape(n_images, self.n_tiles, *tiles.shape[1:])  # (B, N, 3, th, tw)
        parts = [member.predict(by_position[:, k]) for k, member in enumerate(self.members)]  # N × (B, ...)
        return _interleave(parts)  # (B·N, ...) image by image

    def predict_step(self, images: torch.Tensor) -> Prediction:
        size = tuple(images.shape[-2:])
        tiles = self.tiler.tile(images)  # (B·N, 3, th, tw)
        per_tile = self.predict_tiles(tiles, len(images))
        if per_tile.anomaly_map is None:  # an image-level model: the image's score is its highest tile score
            return Prediction(pred_score=per_tile.pred_score.reshape(len(images), -1).amax(1))
        stitched = self.tiler.untile(per_tile.anomaly_map, size)  # (B·N, th, tw) -> (B, H, W), overlaps averaged
        prediction = prediction_from_map(stitched)  # image score = the stitched map's maximum
        if per_tile.pred_mask is not None:  # the model's own segmentation: a pixel is in it if most tiles say so
            prediction.pred_mask = self.tiler.untile(per_tile.pred_mask.float(), size) >= 0.5
        return prediction

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """As every model's; the checkpoint names ``"tiled"``, and ``config`` the model it runs."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = {"format": CHECKPOINT_FORMAT, "model": type(self).name, "config": self.config}
        torch.save({**checkpoint, "state_dict": self.state_dict()}, path)
        return path


def _concatenate(parts: list[Prediction]) -> Prediction:
    """Predictions of consecutive batches -> one `Prediction`."""

    def joined(field: str):
        values = [getattr(part, field) for part in parts]
        return None if values[0] is None else torch.cat(values)

    return Prediction(joined("pred_score"), joined("anomaly_map"), joined("pred_mask"))


def _interleave(parts: list[Prediction]) -> Prediction:
    """N per-position predictions of B images each -> B·N predictions, image by image."""

    def joined(field: str):
        values = [getattr(part, field) for part in parts]
        return None if values[0] is None else torch.stack(values, dim=1).flatten(0, 1)  # (B, N, ...) -> (B·N, ...)

    return Prediction(joined("pred_score"), joined("anomaly_map"), joined("pred_mask"))


__all__ = ["TiledDataset", "TiledModel", "parse_tiling"]
