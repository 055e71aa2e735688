"""The one training loop every trained model uses: plain PyTorch, no Lightning.

    model = adlearn.models.create("stfpm", backbone="efficientnet_lite0", max_epochs=20)
    model.fit(train_data, val_data=None)      # runs `Trainer(model, ...).fit(...)` below
    model.history.loss                        # mean training loss per epoch (learning curve)

The loop asks three things of a model (`adlearn.models.TrainedModel` provides the scaffolding):

    optimizer, scheduler = model.configure_optimizers()    # scheduler may be None
    loss = model.training_step(batch)                      # batch: the dataset's dict, on the device
    model.device                                           # where to train

One optimizer step (`Trainer.training_step`), the classic five lines plus two options:

    batch -> device                  dict of tensors (image, mask, label...), so a model can use masks
    loss = model.training_step(batch)      inside autocast when AMP is on
    loss.backward()                        (scaled first with fp16 AMP, so small gradients survive)
    clip ‖∇θ‖₂ to gradient_clip_val        when > 0 (the gradient keeps its direction)
    optimizer.step(); optimizer.zero_grad()

One epoch (`Trainer.train_one_epoch`) is one shuffled pass over the training data; the scheduler
steps once per epoch (``model.scheduler_interval = "step"`` makes it step per batch). One line is
printed per epoch. Training stops after ``max_epochs`` epochs or ``max_steps`` optimizer steps,
whichever comes first (``max_steps`` may end an epoch early).

Validation and early stopping (optional: ``fit(train_data, val_data)``)
-----------------------------------------------------------------------
After every epoch the model is scored on ``val_data`` with ``val_metric``:

* ``"image_auroc"`` / ``"pixel_auroc"`` — AUROC of the predicted scores / anomaly maps against the
  labels / masks of ``val_data`` (which must hold normal and anomalous images);
* ``"loss"`` — the training loss on the *normal* images of ``val_data`` (no gradient);
* ``"auto"`` (default) — pixel AUROC for a segmentation model when the validation images have
  defect masks, image AUROC when they only have labels, the loss when they are all normal;
* or any ``val_metric_fn(model, val_data) -> float`` the caller passes in, e.g.
  ``lambda model, data: adlearn.evaluate(model, data)["pixel_aupro"]``.

The best epoch's weights are kept (a copy in memory, and ``checkpoint_path`` on disk if given).
With ``patience=p``, training stops once ``p`` epochs in a row did not improve on the best; either
way the best weights are put back at the end.

Why a local AUROC and not ``adlearn.metrics``: the package is layered (design.md) and ``metrics``
sits *above* ``models``, which uses this file, so importing it here would make a cycle. AUROC needs
only ranks (Mann–Whitney U, below, ~15 lines, checked against ``adlearn.metrics`` in the tests);
anything fancier is injected as ``val_metric_fn``.

Batch-norm statistics ("precise BN", optional: ``precise_bn=True``)
-------------------------------------------------------------------
A trained network with batch norms predicts with *running* means and variances: averages of the
last ~10 batches' statistics (momentum 0.1), each computed with the weights of its own step. When
the weights move fast (STFPM: SGD lr 0.4, six steps an epoch) those averages describe networks that
no longer exist, and the model scores worse in ``eval`` mode than it trains. ``precise_bn=True``
re-estimates them for the current weights (Wu & Johnson, 2021, "Rethinking 'Batch' in BatchNorm"):
one pass over the training data without gradients, every trainable batch norm averaging its batch
statistics with equal weights (`recalibrate_batch_norm`). It runs before every validation (so the
kept epoch carries its own statistics) or, without validation, once at the end of training.

Ctrl-C (KeyboardInterrupt)
--------------------------
Stops the loop cleanly: the best weights so far (with validation) or the last completed epoch's
weights (without) are put back, a line says so, and ``history.stopped`` is ``"interrupted"``. The
model is usable right away — no need to start over.

Determinism
-----------
``seed_everything(seed)`` before the optimizer is built and a seeded generator for the shuffling:
the same seed repeats a run exactly on the same machine and device (cuDNN and atomics on GPUs
may still differ in the last bits). AMP (automatic mixed precision) is only used on CUDA, by
default with bfloat16 (fp16 with a gradient scaler on GPUs without bf16); on the CPU it stays off
unless ``amp="bf16"`` is asked for.

Running the same steps by hand (e.g. in a notebook, one batch at a time)::

    trainer = Trainer(model, max_epochs=3)
    trainer.setup()                                 # seed, move to device, build the optimizer
    loader = trainer.make_loader(train_data)        # shuffled DataLoader of dict batches
    batch = next(iter(loader))
    loss = trainer.training_step(batch)             # one optimizer step, returns the loss (float)
    mean_loss = trainer.train_one_epoch(loader)     # one pass
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from adlearn.utils import seed_everything

VAL_METRICS = ("auto", "loss", "image_auroc", "pixel_auroc")


# ---------------------------------------------------------------------------- the record
@dataclass
class History:
    """What happened during training, one entry per epoch (for learning curves)."""

    epoch: list[int] = field(default_factory=list)          # 1, 2, ...
    loss: list[float] = field(default_factory=list)         # mean training loss of the epoch
    val: list[float | None] = field(default_factory=list)   # validation metric (None: no validation)
    lr: list[float] = field(default_factory=list)           # learning rate at the end of the epoch
    seconds: list[float] = field(default_factory=list)      # wall time of the epoch (training only)
    step_loss: list[float] = field(default_factory=list)    # every optimizer step's loss
    val_metric: str | None = None                           # name of the metric in ``val``
    best_epoch: int | None = None
    best_value: float | None = None
    steps: int = 0                                          # optimizer steps taken
    stopped: str = ""   # "max_epochs" | "max_steps" | "early_stopping" | "interrupted"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(**{key: value for key, value in values.items() if key in cls.__dataclass_fields__})

    def plot(self, ax=None, title: str | None = None):
        """Learning curve: training loss per epoch, and the validation metric on a second axis.

        Draws into ``ax`` if given; returns the matplotlib ``Figure`` (a notebook shows it once).
        """
        if ax is None:
            from matplotlib.figure import Figure   # no pyplot: no global state, no window

            ax = Figure(figsize=(5.5, 3.2), layout="constrained").subplots()
        ax.plot(self.epoch, self.loss, "o-", color="tab:blue", label="training loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="tab:blue")
        if any(value is not None for value in self.val):
            other = ax.twinx()
            epochs = [e for e, v in zip(self.epoch, self.val) if v is not None]
            values = [v for v in self.val if v is not None]
            other.plot(epochs, values, "s--", color="tab:orange", label=f"validation {self.val_metric}")
            other.set_ylabel(f"validation {self.val_metric}", color="tab:orange")
            if self.best_epoch is not None:
                other.axvline(self.best_epoch, color="gray", lw=0.8, ls=":")
        ax.set_title(title or "learning curve")
        return ax.figure


# ---------------------------------------------------------------------------- small helpers
def rank_auroc(labels, scores) -> float:
    """AUROC = P(score of a positive > score of a negative), ties counting ½ (Mann–Whitney U).

    Rank all scores together (tied scores share their average rank); the positives' rank sum minus
    its smallest possible value n₊(n₊+1)/2 counts the (positive, negative) pairs ranked correctly.
    """
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives; got {n_pos} positive and {n_neg} negative")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                            # 1-based rank of each distinct value's last copy
    average_rank = ends - (counts - 1) / 2.0            # mean of the ranks a tied block occupies
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to train with, or None for full float32.

    ``"auto"``/True: bfloat16 on CUDA GPUs that have it, else float16; never on the CPU (slow there
    for convolutions, and not needed). ``"bf16"``/``"fp16"`` ask explicitly; False/"off": none.
    """
    if amp in (None, False, "off", "none", "no"):
        return None
    if amp not in (True, "auto", "bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: use 'auto', 'bf16', 'fp16' or False")
    if device.type != "cuda":
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            raise ValueError("amp='fp16' needs a CUDA GPU; on the CPU use amp='bf16' or leave it off")
        return None
    if amp == "fp16" or (amp in (True, "auto") and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _interactive() -> bool:
    """True in a terminal or a Jupyter kernel: where a live progress bar is worth drawing."""
    if sys.stdout.isatty():
        return True
    if "IPython" not in sys.modules:          # not imported: certainly no notebook
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"  # Jupyter, not a terminal


def batch_to_device(batch, device: torch.device) -> dict:
    """A DataLoader batch as a dict on ``device``: tensors moved, strings and lists left as they are.

    A bare tensor or a (images, ...) tuple becomes ``{"image": images}``.
    """
    if isinstance(batch, torch.Tensor):
        batch = {"image": batch}
    elif isinstance(batch, (list, tuple)):
        batch = {"image": batch[0]}
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _select(batch: dict, keep: torch.Tensor) -> dict:
    """The items of a dict batch where ``keep`` (a (B,) bool tensor) is True."""
    indices = keep.nonzero().flatten().tolist()
    return {key: value[keep] if isinstance(value, torch.Tensor) else [value[i] for i in indices]
            for key, value in batch.items()}


def hold_out(data, fraction: float, seed: int = 0):
    """(train part, validation part): a seeded random ``fraction`` of ``data`` set aside.

    For a Dataset (-> two ``Subset``s) or an image tensor; a DataLoader cannot be split — pass
    ``val_data`` yourself.
    """
    if isinstance(data, DataLoader):
        raise ValueError("cannot hold out part of a DataLoader: pass val_data=... to fit, or a Dataset")
    n_val = int(len(data) * fraction)
    if not 0 < n_val < len(data):
        raise ValueError(f"holding out {fraction:.0%} of {len(data)} images leaves no validation or no "
                         "training images")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    val_index, train_index = order[:n_val], order[n_val:]
    if isinstance(data, torch.Tensor):
        return data[train_index], data[val_index]
    return Subset(data, train_index), Subset(data, val_index)


class SyntheticAnomalies(Dataset):
    """Normal images made into a labelled validation set: every second one gets a Perlin-noise
    anomaly (DRÆM's generator, `adlearn.data.PerlinAnomalyGenerator`) and its exact mask.

    Early stopping then follows the pixel AUROC on defects the model has never seen — without a
    single real defect, so the test set stays untouched. Built once (seeded): every epoch is scored
    on the same images. Items: ``{"image", "mask" (H, W), "label"}``.
    """

    def __init__(self, data, seed: int = 0):
        from adlearn.data import PerlinAnomalyGenerator

        generator = PerlinAnomalyGenerator(p_anomalous=1.0, seed=seed)
        self.items = []
        for index in range(len(data)):
            item = data[index]
            image = item["image"] if isinstance(item, dict) else item                 # (3, H, W) normalized
            if index % 2:
                augmented, mask = generator(image[None], normalized=True)            # (1, 3, H, W), (1, 1, H, W)
                self.items.append({"image": augmented[0], "mask": mask[0, 0], "label": 1})
            else:
                self.items.append({"image": image, "mask": torch.zeros(image.shape[-2:]), "label": 0})
        if len(self.items) < 2:
            raise ValueError(f"synthetic validation needs at least 2 held-out images, got {len(self.items)}; "
                             "hold out a larger val_fraction")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class _TensorImages(Dataset):
    """A (N, 3, H, W) tensor seen as a dataset of ``{"image": ...}`` items."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index]}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of everything training can change: trainable parameters and all buffers."""
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b.detach().clone() for name, b in model.named_buffers()})
    return state


@torch.no_grad()
def _restore(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name, value in snapshot.items():
        tensors[name].copy_(value)


def trainable_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms whose statistics training changes: running statistics and trainable weights.

    A frozen backbone's batch norms (no gradient, kept in eval mode) are left alone.
    """
    return [module for module in model.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and any(p.requires_grad for p in module.parameters(recurse=False))]


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches, forward: Callable[[dict], object]) -> int:
    """Re-estimate the running statistics of ``model``'s trainable batch norms for its current weights.

    ``forward(batch)`` runs the part of the model that holds them on each batch (in train mode, no
    gradient); with ``momentum=None`` PyTorch keeps the plain average of the batches' means and
    variances instead of an exponential one. Returns the number of batch norms re-estimated.
    """
    layers = trainable_batch_norms(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    try:
        for batch in batches:
            forward(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)


# ---------------------------------------------------------------------------- the loop
class Trainer:
    """Trains ``model`` (see the module docstring for what it needs and does).

    Args:
        model: has ``configure_optimizers()``, ``training_step(batch)`` and ``device``.
        max_epochs / max_steps: stop after this many epochs / optimizer steps (at least one needed).
        val_metric: ``"auto"``, ``"loss"``, ``"image_auroc"``, ``"pixel_auroc"``, or the name to
            record ``val_metric_fn``'s value under.
        val_metric_fn: ``f(model, val_data) -> float``, computed after each epoch instead.
        mode: ``"max"`` or ``"min"``: which direction is better (default: "min" for the loss).
        patience: stop after this many epochs without improvement (None: never stop early).
        min_delta: an improvement must beat the best by more than this.
        gradient_clip_val: clip the gradients' global L2 norm to this (0: no clipping).
        amp: ``"auto"`` (CUDA only), ``"bf16"``, ``"fp16"`` or False.
        seed: seeds everything and the shuffling (default: ``model.seed`` or 0).
        batch_size: for Datasets (default ``model.batch_size``); a DataLoader is used as given.
        restore_best: put the best epoch's weights back at the end (False: keep the last epoch's,
            e.g. when ``val_data`` is only *watched* — a test set must never choose the epoch).
        checkpoint_path: ``model.save(path)`` at every new best epoch (and at the end).
        precise_bn: re-estimate the trainable batch norms' statistics on the training data before
            each validation and at the end (see the module docstring); the pass runs
            ``model.batch_norm_forward(batch)`` when the model has it, else its ``training_step``.
        callbacks: ``f(trainer, record)`` called after every epoch with that epoch's record dict.
        verbose: print one line per epoch.
        progress: a tqdm bar per epoch (``"auto"``: in a terminal or notebook, not in logs).
    """

    def __init__(self, model: nn.Module, *, max_epochs: int | None = None, max_steps: int | None = None,
                 val_metric: str = "auto", val_metric_fn: Callable | None = None, mode: str | None = None,
                 patience: int | None = None, min_delta: float = 0.0, gradient_clip_val: float = 0.0,
                 amp: bool | str = "auto", seed: int | None = None, batch_size: int | None = None,
                 num_workers: int = 0, restore_best: bool = True, checkpoint_path: str | Path | None = None,
                 callbacks: Sequence[Callable] = (), precise_bn: bool = False, verbose: bool = True,
                 progress: bool | str = "auto"):
        if max_epochs is None and max_steps is None:
            raise ValueError("give max_epochs or max_steps (or both): the training loop needs an end")
        for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if val_metric_fn is None and val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric={val_metric!r}: use one of {VAL_METRICS} or pass val_metric_fn")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 (or None for no early stopping), got {patience}")
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.model = model
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.val_metric, self.val_metric_fn, self.mode = val_metric, val_metric_fn, mode
        self.patience, self.min_delta = patience, min_delta
        self.gradient_clip_val = float(gradient_clip_val or 0.0)
        self.device = getattr(model, "device", None) or torch.device("cpu")
        self.amp_dtype = resolve_amp(amp, self.device)
        # fp16 has a small range: scale the loss up before backward so gradients do not underflow.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.seed = seed if seed is not None else getattr(model, "seed", 0)
        self.batch_size = batch_size or getattr(model, "batch_size", 32)
        self.num_workers = num_workers
        self.restore_best = restore_best
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.callbacks = list(callbacks)
        self.precise_bn = precise_bn
        self._train_data = None                  # what precise_bn re-estimates the statistics on
        self.verbose = verbose
        self.progress = _interactive() if progress == "auto" else bool(progress)
        self.name = getattr(model, "name", type(model).__name__)
        self.optimizer = self.scheduler = None
        self.history = History()
        self.global_step = 0
        self.epoch = 0
        self.last_grad_norm: float | None = None    # before clipping, of the last step
        self._best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ pieces
    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def setup(self) -> "Trainer":
        """Seed, move the model to its device, build its optimizer and scheduler."""
        seed_everything(self.seed)
        self.model.to(self.device)
        self.optimizer, self.scheduler = self.model.configure_optimizers()
        self.scheduler_interval = getattr(self.model, "scheduler_interval", "epoch")
        return self

    def make_loader(self, data, shuffle: bool = True) -> DataLoader:
        """A DataLoader of dict batches from a Dataset, a DataLoader (used as is) or an image tensor."""
        if isinstance(data, DataLoader):
            return data
        if isinstance(data, torch.Tensor):
            data = _TensorImages(data)
        if len(data) == 0:
            raise ValueError(f"{self.name}: the dataset is empty — nothing to train on")
        # A seeded generator: the same seed shuffles the same way, epoch after epoch.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _check(self, batch: dict) -> None:
        if "image" in batch and hasattr(self.model, "check_images"):
            self.model.check_images(batch["image"])

    def training_step(self, batch) -> float:
        """One optimizer step on one batch; returns its loss."""
        if self.optimizer is None:
            self.setup()
        batch = batch_to_device(batch, self.device)
        self._check(batch)
        self.model.train()
        with self._autocast():
            loss = self.model.training_step(batch)                       # scalar tensor
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: the loss became {loss.item()} at step {self.global_step + 1}; "
                                     "try a smaller learning rate, gradient_clip_val=1.0, or amp=False")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)                          # clip the true gradients
        else:
            loss.backward()
        if self.gradient_clip_val > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.gradient_clip_val)
            self.last_grad_norm = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)                              # skipped if grads overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self.global_step += 1
        value = float(loss.detach())
        self.history.step_loss.append(value)
        return value

    def _out_of_steps(self) -> bool:
        return self.max_steps is not None and self.global_step >= self.max_steps

    def train_one_epoch(self, loader: DataLoader) -> float:
        """One pass over ``loader`` (or up to ``max_steps``); returns the mean loss of its steps."""
        if self.optimizer is None:
            self.setup()
        self.epoch += 1
        bar = loader
        if self.progress:
            from tqdm.auto import tqdm

            total = self.max_epochs and f"/{self.max_epochs}"
            bar = tqdm(loader, desc=f"{self.name} epoch {self.epoch}{total or ''}", leave=False,
                       file=sys.stdout, dynamic_ncols=True)
        losses = []
        for batch in bar:
            losses.append(self.training_step(batch))
            if self.progress:
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if self._out_of_steps():
                break
        if self.progress:
            bar.close()
        if not losses:
            raise ValueError(f"{self.name}: the training data gave no batches")
        return float(np.mean(losses))

    def run_precise_bn(self, data=None) -> None:
        """``precise_bn``: the trainable batch norms' statistics re-estimated for the current weights,
        on ``data`` (default: the data ``fit`` trains on)."""
        data = self._train_data if data is None else data
        if not self.precise_bn or data is None:
            return
        forward = getattr(self.model, "batch_norm_forward", None) or self.model.training_step

        def run(batch):
            with self._autocast():
                forward(batch_to_device(batch, self.device))

        recalibrate_batch_norm(self.model, self.make_loader(data, shuffle=False), run)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def _validation_loss(self, loader: DataLoader) -> float:
        self.model.eval()
        losses = []
        for batch in loader:
            batch = batch_to_device(batch, self.device)
            if "label" in batch:                      # the loss describes normal data only
                batch = _select(batch, torch.as_tensor(batch["label"]) == 0)
                if len(batch["image"]) == 0:
                    continue
            with self._autocast():
                losses.append(float(self.model.training_step(batch)))
        if not losses:
            raise ValueError("validation loss needs normal images (label 0) in val_data")
        return float(np.mean(losses))

    @torch.no_grad()
    def _validation_auroc(self, loader: DataLoader, metric: str) -> tuple[str, float | None]:
        """(metric actually used, value); for "auto" falls back to ("loss", None) without both classes."""
        labels, scores, masks, maps = [], [], [], []
        for batch in loader:
            batch = batch_to_device(batch, self.device)
            if "label" not in batch:
                raise ValueError(f"val_metric={metric!r} needs labelled validation data "
                                 "(dict items with 'label'); use val_metric='loss' for normal images only")
            with self._autocast():
                prediction = self.model.predict(batch["image"])
            labels.append(torch.as_tensor(batch["label"]).cpu())
            scores.append(prediction.pred_score.float().cpu())
            if prediction.anomaly_map is not None and "mask" in batch:
                maps.append(prediction.anomaly_map.float().cpu())
                masks.append(batch["mask"].cpu())
        labels = torch.cat(labels).numpy()
        has_both = 0 < labels.sum() < len(labels)
        if metric == "auto":
            if not has_both:
                return "loss", None
            metric = "pixel_auroc" if maps and torch.cat(masks).any() else "image_auroc"
        if metric == "pixel_auroc":
            if not maps:
                raise ValueError("val_metric='pixel_auroc' needs a model with anomaly maps and data with masks")
            return metric, rank_auroc(torch.cat(masks).numpy() > 0.5, torch.cat(maps).numpy())
        return metric, rank_auroc(labels, torch.cat(scores).numpy())

    def validate(self, val_data) -> float:
        """The validation metric on ``val_data`` (fixes ``val_metric`` on the first call for "auto")."""
        loader = self.make_loader(val_data, shuffle=False)
        if self.val_metric_fn is not None:
            value = float(self.val_metric_fn(self.model, val_data))
        elif self.val_metric == "loss":
            value = self._validation_loss(loader)
        else:
            self.val_metric, value = self._validation_auroc(loader, self.val_metric)
            if value is None:
                self.log(f"{self.name}: the validation images are all one class; validating on the loss")
                value = self._validation_loss(loader)
        if self.mode is None:
            self.mode = "min" if self.val_metric == "loss" else "max"
        self.history.val_metric = self.val_metric if isinstance(self.val_metric, str) else "val_metric"
        return value

    def _improved(self, value: float) -> bool:
        best = self.history.best_value
        if value is None or math.isnan(value):
            return False
        if best is None:
            return True
        return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

    # ------------------------------------------------------------------ the whole run
    def _save_checkpoint(self) -> None:
        if self.checkpoint_path is not None and hasattr(self.model, "save"):
            self.model.save(self.checkpoint_path)

    def _mark_fitted(self) -> None:
        if hasattr(self.model, "_is_fitted"):     # an AnomalyModel: predict() is allowed from now on
            self.model._is_fitted.fill_(True)

    def _end_epoch(self, loss: float, seconds: float, val_data) -> bool:
        """Record the epoch, validate, keep the best weights; True when early stopping says stop."""
        self._mark_fitted()
        if val_data is not None:
            self.run_precise_bn()               # the statistics of the weights being validated
        value = self.validate(val_data) if val_data is not None else None
        history = self.history
        history.epoch.append(self.epoch)
        history.loss.append(loss)
        history.val.append(value)
        history.lr.append(float(self.optimizer.param_groups[0]["lr"]))
        history.seconds.append(seconds)
        history.steps = self.global_step
        improved = val_data is None or self._improved(value)
        if improved:   # without validation, the latest epoch is the best we know
            history.best_epoch, history.best_value = self.epoch, value
        if improved or not self.restore_best:   # what Ctrl-C or the end of training will put back
            self._best_state = _snapshot(self.model)
            self._save_checkpoint()
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value if value is not None else loss)
            else:
                self.scheduler.step()

        steps = f" (step {self.global_step}{f'/{self.max_steps}' if self.max_steps else ''})"
        line = f"{self.name} epoch {self.epoch}{f'/{self.max_epochs}' if self.max_epochs else ''}{steps}: " \
               f"loss {loss:.4g}"
        if value is not None:
            line += f" | val {history.val_metric} {value:.4f}{' *best' if improved else ''}"
        self.log(line + f" | {seconds:.1f} s")
        for callback in self.callbacks:
            callback(self, {"epoch": self.epoch, "loss": loss, "val": value, "seconds": seconds,
                            "improved": improved, "steps": self.global_step})

        waited = self.epoch - (history.best_epoch or 0)
        return self.patience is not None and val_data is not None and waited >= self.patience

    def fit(self, train_data, val_data=None) -> History:
        """Train until max_epochs / max_steps / early stopping / Ctrl-C; return the history."""
        self.setup()
        self._train_data = train_data
        loader = self.make_loader(train_data)
        amp = f", AMP {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else ""
        limits = " and ".join(s for s in (self.max_epochs and f"{self.max_epochs} epochs",
                                          self.max_steps and f"{self.max_steps} steps") if s)
        self.log(f"{self.name}: training for at most {limits} on {len(loader.dataset)} images "
                 f"({len(loader)} batches/epoch, {self.device}{amp})"
                 + (f"; early stopping patience {self.patience}" if self.patience and val_data is not None else ""))
        stopped = "max_epochs"
        try:
            while self.max_epochs is None or self.epoch < self.max_epochs:
                start = time.perf_counter()
                loss = self.train_one_epoch(loader)
                if self._end_epoch(loss, time.perf_counter() - start, val_data):
                    stopped = "early_stopping"
                    self.log(f"{self.name}: no improvement of val {self.history.val_metric} for "
                             f"{self.patience} epochs: stopping early")
                    break
                if self._out_of_steps():
                    stopped = "max_steps"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            if self._best_state is None:
                if self.global_step == 0:
                    self.log(f"{self.name}: interrupted before the first step — the model is not trained")
                else:
                    self._mark_fitted()
                    self.log(f"{self.name}: interrupted during epoch {self.epoch} after {self.global_step} "
                             "steps, before any epoch ended — keeping the current weights")
            elif self.restore_best:
                self.log(f"{self.name}: interrupted during epoch {self.epoch} — keeping the weights of "
                         f"epoch {self.history.best_epoch}{self._best_note()}")
            else:
                self.log(f"{self.name}: interrupted during epoch {self.epoch} — keeping the weights of "
                         f"epoch {self.epoch - 1}, the last completed one")
        self.history.stopped = stopped
        self.history.steps = self.global_step
        if self._best_state is not None:
            _restore(self.model, self._best_state)
            if self.restore_best and val_data is not None and stopped != "interrupted" \
                    and self.history.best_epoch != self.epoch:
                self.log(f"{self.name}: restored the best weights, epoch {self.history.best_epoch}"
                         f"{self._best_note()}")
            if val_data is None:                # with validation, every kept epoch was recalibrated
                self.run_precise_bn()
            self._save_checkpoint()
        self.model.eval()
        return self.history

    def _best_note(self) -> str:
        value = self.history.best_value
        return "" if value is None else f" (val {self.history.val_metric} {value:.4f})"


def fit(model: nn.Module, train_data, val_data=None, **options) -> History:
    """``Trainer(model, **options).fit(train_data, val_data)`` in one call."""
    return Trainer(model, **options).fit(train_data, val_data)


__all__ = ["History", "SyntheticAnomalies", "Trainer", "batch_to_device", "fit", "hold_out", "rank_auroc",
           "resolve_amp"]
