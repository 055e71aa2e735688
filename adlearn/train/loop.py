"""The `Trainer`: epochs of optimizer steps, validation, and the hooks a model can use.

One training batch (`Trainer.training_step`) — the classic lines of PyTorch, owned here once:

    batch -> device                       dict of tensors (image, mask, label...)
    out = model.training_step(batch, trainer)     inside autocast when AMP is on
    automatic optimization (one optimizer, the default):
        trainer.optimizer_step(out)       zero_grad, backward (scaled with fp16), clip, step
    manual optimization (``model.automatic_optimization = False``, several named optimizers):
        the model calls trainer.optimizer_step(loss, "generator") itself, as often as it needs,
        and returns its named losses {"generator": ..., "discriminator": ...} for the history.

One epoch is one shuffled pass over the training data. Schedulers step once per epoch
(``model.scheduler_interval = "step"``: once per optimizer step). A model may split training into
**phases** (``model.training_phases()`` -> [`Phase`, ...]): each trains only its own modules, with
its own optimizers, for its own length, one after the other, into one history.

Hooks a model may define (all optional): ``on_fit_start(data, trainer)`` (after the model is on
its device, before the first step: e.g. statistics of the training data), ``on_epoch_start(trainer)``,
``validation_step(batch)`` (the validation loss — never steps an optimizer), ``on_fit_end(data,
trainer)`` (after the best weights are back: e.g. quantiles of the maps).

Randomness: a run draws from its own stream (`adlearn.utils.RandomStream`, seeded with ``seed`` by
`Trainer.setup`) — dropout, random fibers, anything drawn from the global generators during ``fit``,
an epoch or a batch stepped by hand — and the shuffling from its own seeded `torch.Generator`. The
caller's global generators are never reseeded nor advanced.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from adlearn.train.batch_norm import recalibrate_batch_norm
from adlearn.train.callbacks import (
    BestWeights,
    Callback,
    Checkpoint,
    EarlyStopping,
    EpochFunction,
    EpochLog,
    PreciseBatchNorm,
)
from adlearn.train.config import VAL_METRICS, TrainingConfig
from adlearn.train.devices import batch_to_device, interactive
from adlearn.train.history import History
from adlearn.train.phases import Phase
from adlearn.train.step import BatchSteps
from adlearn.train.validation import validation_auroc, validation_loss
from adlearn.utils import RandomStream, torch_generator


# ---------------------------------------------------------------------------- the loop
class Trainer(BatchSteps):
    """Trains ``model`` (see the module docstring for what it needs and does).

    Args:
        model: has ``configure_optimizers()``, ``training_step(batch, trainer)`` and ``device``.
        config: a `TrainingConfig` (or its options as keywords: ``Trainer(model, max_epochs=5)``).
        val_metric_fn: ``f(model, val_data) -> float``, computed after each epoch instead of
            ``config.val_metric``; the ``val_metric`` keyword then names it in the history.
        mode: ``"max"`` or ``"min"``: which direction is better (default: "min" for the loss).
        seed: seeds the run's own random stream and the shuffling (default: ``model.seed`` or 0); the
            global generators are left alone.
        batch_size: for Datasets (default ``model.batch_size``); a DataLoader is used as given.
        restore_best: put the best epoch's weights back at the end (False: keep the last epoch's,
            e.g. when ``val_data`` is only *watched* — a test set must never choose the epoch).
        checkpoint_path: ``model.save(path)`` at every new best epoch (and at the end).
        callbacks: `Callback` objects, or functions ``f(trainer, record)`` called after every epoch.
        verbose: print one line per epoch.
        progress: a tqdm bar per epoch (``"auto"``: in a terminal or notebook, not in logs).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainingConfig | None = None,
        *,
        val_metric_fn: Callable | None = None,
        mode: str | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        restore_best: bool = True,
        checkpoint_path: str | Path | None = None,
        callbacks: Sequence[Callable | Callback] = (),
        verbose: bool = True,
        progress: bool | str = "auto",
        **options,
    ):
        metric_name = None
        if val_metric_fn is not None and options.get("val_metric", "auto") not in VAL_METRICS:
            metric_name = options.pop("val_metric")  # the name to record val_metric_fn's value under
        config = config.replace(**options) if config is not None else TrainingConfig(**options)
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        super().__init__(model, config)
        self.val_metric = metric_name or config.val_metric
        self.val_metric_fn, self.mode = val_metric_fn, mode
        self.seed = seed if seed is not None else getattr(model, "seed", 0)
        self.random = RandomStream(self.seed, self.device)  # the run's draws (dropout...), not the caller's
        self.batch_size = batch_size or getattr(model, "batch_size", 32)
        phases = model.training_phases() if hasattr(model, "training_phases") else None
        self.phases: list[Phase] = (
            [capped(phase, config.max_steps) for phase in phases]
            if phases
            else [Phase("train", model.configure_optimizers, None, config.max_epochs, config.max_steps)]
        )
        self.total_epochs = (
            None if any(p.max_epochs is None for p in self.phases) else sum(p.max_epochs for p in self.phases)
        )
        self.verbose = verbose
        self.progress = interactive() if progress == "auto" else bool(progress)
        self.epoch = 0  # epochs, all phases together
        self.train_data = self.val_data = None
        # The standard callbacks, in the order their hooks run, then the caller's.
        self.best_weights = BestWeights(restore_best)
        self.callbacks: list[Callback] = [self.best_weights]
        if config.precise_bn:
            self.callbacks.append(PreciseBatchNorm())
        if checkpoint_path is not None:
            self.callbacks.append(Checkpoint(Path(checkpoint_path), restore_best))
        if verbose:
            self.callbacks.append(EpochLog())
        if config.patience is not None:
            self.callbacks.append(EarlyStopping(config.patience))
        self.callbacks += [c if isinstance(c, Callback) else EpochFunction(c) for c in callbacks]

    # ------------------------------------------------------------------ pieces
    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def stop(self, reason: str, message: str = "") -> None:
        """Ask the loop to end the current phase after this epoch (used by `EarlyStopping`)."""
        self._stop_reason = reason
        if message:
            self.log(message)

    def setup(self) -> Trainer:
        """Start the run's random stream from ``seed``, move the model to its device, build the first
        phase's optimizers."""
        self.random.reset(self.seed)
        with self.random:
            self.model.to(self.device)
            self.begin_phase(self.phases[0])
        return self

    def make_loader(self, data, shuffle: bool = True) -> DataLoader:
        """A DataLoader of dict batches from a Dataset, a DataLoader (used as is) or an image tensor."""
        from adlearn.data.validation import TensorImages

        if isinstance(data, DataLoader):
            return data
        if isinstance(data, torch.Tensor):
            data = TensorImages(data)
        if len(data) == 0:
            raise ValueError(f"{self.name}: the dataset is empty — nothing to train on")
        # A seeded generator: the same seed shuffles the same way, epoch after epoch.
        generator = torch_generator(self.seed)
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_one_epoch(self, loader: DataLoader) -> float:
        """One pass over ``loader`` (or up to the phase's ``max_steps``); returns the mean loss.

        The mean of every named loss is kept in ``trainer.epoch_losses``.
        """
        with self.random:
            return self._train_one_epoch(loader)

    def training_step(self, batch) -> float:
        """One training batch (see `BatchSteps.training_step`), drawing from the run's random stream."""
        with self.random:
            return super().training_step(batch)

    def _train_one_epoch(self, loader: DataLoader) -> float:
        if self.optimizers is None:
            self.setup()
        self.epoch += 1
        self.phase_epoch += 1
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start(self)
        bar = loader
        if self.progress:
            from tqdm.auto import tqdm

            total = self.total_epochs and f"/{self.total_epochs}"
            bar = tqdm(
                loader,
                desc=f"{self.name} epoch {self.epoch}{total or ''}",
                leave=False,
                file=sys.stdout,
                dynamic_ncols=True,
            )
        losses, named = [], {}
        for batch in bar:
            losses.append(self.training_step(batch))
            for name, value in self.last_losses.items():
                named.setdefault(name, []).append(value)
            if self.progress:
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if self._out_of_steps():
                break
        if self.progress:
            bar.close()
        if not losses:
            raise ValueError(f"{self.name}: the training data gave no batches")
        self.epoch_losses = {name: float(np.mean(values)) for name, values in named.items()}
        return float(np.mean(losses))

    def run_precise_bn(self, data=None) -> None:
        """``precise_bn``: the trainable batch norms' statistics re-estimated for the current weights,
        on ``data`` (default: the data ``fit`` trains on)."""
        data = self.train_data if data is None else data
        if not self.config.precise_bn or data is None:
            return
        forward = getattr(self.model, "batch_norm_forward", None) or self.validation_step

        def run(batch):
            with self.autocast():
                forward(batch_to_device(batch, self.device))

        with self.random:
            recalibrate_batch_norm(self.model, self.make_loader(data, shuffle=False), run)

    # ------------------------------------------------------------------ validation
    def validate(self, val_data) -> float:
        """The validation metric on ``val_data`` (fixes ``val_metric`` on the first call for "auto")."""
        with self.random:
            return self._validate(val_data)

    def _validate(self, val_data) -> float:
        batches = (batch_to_device(b, self.device) for b in self.make_loader(val_data, shuffle=False))
        if self.val_metric_fn is not None:
            value = float(self.val_metric_fn(self.model, val_data))
        elif self.val_metric == "loss":
            value = validation_loss(self.model, batches, self.autocast, self.validation_step)
        else:
            self.val_metric, value = validation_auroc(self.model, batches, self.val_metric, self.autocast)
            if value is None:
                self.log(f"{self.name}: the validation images are unlabelled or all one class; validating on the loss")
                batches = (batch_to_device(b, self.device) for b in self.make_loader(val_data, shuffle=False))
                value = validation_loss(self.model, batches, self.autocast, self.validation_step)
        if self.mode is None:
            self.mode = "min" if self.val_metric == "loss" else "max"
        self.history.val_metric = self.val_metric
        return value

    def _improved(self, value: float) -> bool:
        best = self.history.best_value
        if value is None or np.isnan(value):
            return False
        if best is None:
            return True
        delta = self.config.min_delta
        return value > best + delta if self.mode == "max" else value < best - delta

    # ------------------------------------------------------------------ the whole run
    def _mark_fitted(self) -> None:
        if hasattr(self.model, "mark_fitted"):  # an AnomalyModel: predict() is allowed from now on
            self.model.mark_fitted()

    def _end_epoch(self, seconds: float) -> None:
        """Validate, record the epoch, step the schedulers, run the callbacks."""
        self._mark_fitted()
        value = None
        if self.val_data is not None:
            for callback in self.callbacks:
                callback.on_validation_start(self)
            value = self.validate(self.val_data)
        history = self.history
        improved = self.val_data is None or self._improved(value)
        if improved:  # without validation, the latest epoch is the best we know
            history.best_epoch, history.best_value = self.epoch, value
        history.record_epoch(
            self.epoch, self.epoch_losses, value, float(self.optimizer.param_groups[0]["lr"]), seconds, self.phase.name
        )
        history.steps = self.global_step
        if self.scheduler_interval == "epoch":
            for _, scheduler in self.optimizers.values():
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(value if value is not None else history.loss[-1])
                elif scheduler is not None:
                    scheduler.step()
        record = {
            "epoch": self.epoch,
            "loss": history.loss[-1],
            "losses": dict(self.epoch_losses),
            "val": value,
            "seconds": seconds,
            "improved": improved,
            "steps": self.global_step,
            "phase": self.phase.name,
        }
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)

    def _run_phase(self, loader: DataLoader) -> str:
        """Epochs until the phase's limits, early stopping or Ctrl-C; returns why it stopped."""
        phase = self.phase
        for callback in self.callbacks:
            callback.on_phase_start(self, phase)
        stopped = "max_epochs"
        try:
            while phase.max_epochs is None or self.phase_epoch < phase.max_epochs:
                start = time.perf_counter()
                self.train_one_epoch(loader)
                self._end_epoch(time.perf_counter() - start)
                if self._stop_reason:
                    stopped = self._stop_reason
                    break
                if self._out_of_steps():
                    stopped = "max_steps"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            self._log_interrupt()
        for callback in self.callbacks:
            callback.on_phase_end(self, phase, stopped)
        self.end_phase()
        return stopped

    def _log_interrupt(self) -> None:
        if self.best_weights.state is None:
            if self.global_step == 0:
                self.log(f"{self.name}: interrupted before the first step — the model is not trained")
            else:
                self._mark_fitted()
                self.log(
                    f"{self.name}: interrupted during epoch {self.epoch} after {self.global_step} "
                    "steps, before any epoch ended — keeping the current weights"
                )
        elif self.best_weights.restore_best:
            self.log(
                f"{self.name}: interrupted during epoch {self.epoch} — keeping the weights of "
                f"epoch {self.history.best_epoch}{self.best_note()}"
            )
        else:
            self.log(
                f"{self.name}: interrupted during epoch {self.epoch} — keeping the weights of "
                f"epoch {self.epoch - 1}, the last completed one"
            )

    def fit(self, train_data, val_data=None) -> History:
        """Train until every phase ends (max_epochs / max_steps / early stopping) or Ctrl-C."""
        self.setup()
        with self.random:
            return self._fit(train_data, val_data)

    def _fit(self, train_data, val_data) -> History:
        self.train_data, self.val_data = train_data, val_data
        loader = self.make_loader(train_data)
        amp = f", AMP {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else ""
        limits = " and ".join(
            s
            for s in (
                self.total_epochs and f"{self.total_epochs} epochs",
                self.config.max_steps
                and f"{self.config.max_steps} steps" + (" per phase" if len(self.phases) > 1 else ""),
            )
            if s
        )
        phases = (
            f" in {len(self.phases)} phases ({', '.join(p.name for p in self.phases)})" if len(self.phases) > 1 else ""
        )
        patience = self.config.patience
        limits = limits or "each phase's length"
        self.log(
            f"{self.name}: training for at most {limits}{phases} on "
            f"{len(loader.dataset)} images ({len(loader)} batches/epoch, {self.device}{amp})"
            + (f"; early stopping patience {patience}" if patience and val_data is not None else "")
        )
        if hasattr(self.model, "on_fit_start"):
            self.model.on_fit_start(train_data, self)
        stopped = "max_epochs"
        for index, phase in enumerate(self.phases):
            if index:
                self.begin_phase(phase)
            stopped = self._run_phase(loader)
            if stopped == "interrupted":
                break
        self.history.stopped = stopped
        self.history.steps = self.global_step
        if stopped != "interrupted" and hasattr(self.model, "on_fit_end"):
            self.model.on_fit_end(train_data, self)
        self.model.eval()
        return self.history

    def best_note(self) -> str:
        value = self.history.best_value
        return "" if value is None else f" (val {self.history.val_metric} {value:.4f})"


def capped(phase: Phase, max_steps: int | None) -> Phase:
    """A model's own phase under the run's ``max_steps``: with several phases, every phase still runs, each
    for at most ``max_steps`` training batches (so a short run trains every part of the model)."""
    if max_steps is None or (phase.max_steps is not None and phase.max_steps <= max_steps):
        return phase
    return dataclasses.replace(phase, max_steps=max_steps)


def fit(model: nn.Module, train_data, val_data=None, **options) -> History:
    """``Trainer(model, **options).fit(train_data, val_data)`` in one call."""
    return Trainer(model, **options).fit(train_data, val_data)
