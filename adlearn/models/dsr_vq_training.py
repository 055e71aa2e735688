"""DSR phase 1 on the shared training loop: the general appearance model pretrained on natural images.

The paper (Zavrtanik, Kristan & Skočaj, ECCV 2022, Sec. 3.1) trains its VQ-VAE (`adlearn.models.dsr_vq`)
once, on ImageNet, and keeps it frozen; the reference (``anomalib.models.image.dsr``) downloads the
result. Offline, `train_vq_model` trains it on random crops of the photographs the installed wheels
ship (`adlearn.data.NaturalImageCrops`) with `adlearn.train.Trainer` — its progress bar, epoch log,
validation, early stopping and checkpoints — and caches the weights in ``$ADLEARN_CACHE/dsr/``, one file
per image size and recipe (`vq_cache_path`, versioned by ``CACHE_VERSION``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from adlearn.models.common import save_cached_weights
from adlearn.models.dsr_vq import GeneralAppearanceModel
from adlearn.utils import seeded

CACHE_VERSION = 2  # in the cache file's name; 2: trained on the shared loop (held-out crops, best epoch kept)


def vq_cache_path(
    image_size: tuple[int, int],
    hiddens: int,
    residual_layers: int,
    residual_hiddens: int,
    num_embeddings: int,
    embedding_dim: int,
    steps: int,
    seed: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    epochs: int = 10,
    patience: int | None = None,
) -> Path:
    """The cache file of one architecture and training recipe (versioned: ``CACHE_VERSION``)."""
    from adlearn.cache import cache_dir

    name = (
        f"vq-v{CACHE_VERSION}_{image_size[0]}x{image_size[1]}px_{hiddens}h_{residual_layers}x{residual_hiddens}r_"
        f"{num_embeddings}x{embedding_dim}codes_{steps}x{batch_size}steps_lr{lr:g}_{epochs}ep_p{patience}_seed{seed}.pt"
    )
    return cache_dir() / "dsr" / name


# ----------------------------------------------------------------------------- phase 1 on the shared loop
class NaturalCropEpoch(Dataset):
    """``length`` fresh crops of an endless `NaturalImageCrops` stream as one epoch of ``{"image"}`` items."""

    def __init__(self, crops, length: int):
        self.crops, self.length = crops, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.crops.view()}  # (3, H, W) in [0, 1]; a new random view at every call


class VqPretraining(nn.Module):
    """Phase 1 as a model of the shared loop (`adlearn.train.Trainer`): the VQ-VAE, its Adam, its loss."""

    name = "dsr_vq"

    def __init__(self, vq: GeneralAppearanceModel, lr: float, device: str | torch.device):
        super().__init__()
        self.vq, self.lr, self.device = vq, lr, torch.device(device)

    def configure_optimizers(self):
        return torch.optim.Adam(self.vq.parameters(), lr=self.lr)

    def training_step(self, batch: dict, trainer=None) -> dict[str, torch.Tensor]:
        return self.vq.training_loss(batch["image"])

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.vq.training_loss(batch["image"])  # in eval mode: no EMA step, no restart

    def save(self, path) -> None:  # the loop's checkpoints
        save_cached_weights(self.vq, path)


def train_vq_model(
    image_size: int | tuple[int, int] = 256,
    hiddens: int = 128,
    residual_layers: int = 2,
    residual_hiddens: int = 64,
    num_embeddings: int = 4096,
    embedding_dim: int = 128,
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    epochs: int = 10,
    patience: int | None = None,
    val_crops: int = 64,
    cache: bool = True,
    verbose: bool = True,
    return_model: bool = False,
):
    """Train the general appearance model on natural crops (DSR phase 1, offline); returns the cached path.

    Adam (``lr``) on the reconstruction + commitment losses, ``steps`` batches of ``batch_size`` random
    crops (any scale, flips, 10 % grey) of the shipped photographs at ``image_size``, in ``epochs`` epochs
    of the shared loop; after each, the same losses on ``val_crops`` held-out crops (another seed) pick the
    best epoch, whose weights are kept, and stop training after ``patience`` epochs without a better one
    (None: never). While it trains, the best weights so far are checkpointed beside the cache file
    (``*.checkpoint.pt``, loadable with ``vq_weights=``). The file is written once per size and recipe
    (`vq_cache_path`); ``return_model=True`` trains regardless and also returns the model.
    """
    from adlearn.data.natural_images import NaturalImageCrops
    from adlearn.train import Trainer

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if size[0] % 8 or size[1] % 8:
        raise ValueError(f"the VQ model downsamples by 8: image sides must be divisible by 8, got {size}")
    epochs = max(1, min(epochs, steps))
    recipe = dict(batch_size=batch_size, lr=lr, epochs=epochs, patience=patience)
    path = vq_cache_path(
        size, hiddens, residual_layers, residual_hiddens, num_embeddings, embedding_dim, steps, seed, **recipe
    )
    if cache and path.is_file() and not return_model:
        return path
    checkpoint = path.with_name(path.stem + ".checkpoint.pt") if cache else None
    with seeded(seed, device):  # the caller's random state untouched, cache or not
        model = GeneralAppearanceModel(hiddens, residual_layers, residual_hiddens, num_embeddings, embedding_dim)
        train = NaturalCropEpoch(NaturalImageCrops(size, seed=seed, normalize=False), -(-steps // epochs) * batch_size)
        held_out = NaturalImageCrops(size, seed=seed + 1, normalize=False).sample(val_crops)  # (N, 3, H, W)
        trainer = Trainer(
            VqPretraining(model, lr, device),
            seed=seed,
            batch_size=batch_size,
            max_epochs=epochs,
            max_steps=steps,
            patience=patience,
            val_metric="loss",
            amp=False,
            checkpoint_path=checkpoint,
            verbose=verbose,
            progress="auto" if verbose else False,
        )
        history = trainer.fit(train, held_out)
    if history.stopped == "interrupted":
        raise KeyboardInterrupt(f"DSR VQ pretraining interrupted: nothing cached (best weights so far: {checkpoint})")
    model.eval()
    if cache:
        save_cached_weights(model, path)
        checkpoint.unlink(missing_ok=True)
    return (path, model) if return_model else path
