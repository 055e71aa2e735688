"""What happens around the epochs: best weights, early stopping, checkpoints, precise-BN, the log.

Each is a `Callback`: a small object whose hooks the `Trainer` calls at fixed moments,

    on_phase_start(trainer, phase)      a training phase begins (its optimizers are built)
    on_validation_start(trainer)        an epoch ended and validation is about to run
    on_epoch_end(trainer, record)       the epoch is recorded: record = {"epoch", "loss", "losses",
                                        "val", "improved", "seconds", "steps", "phase"}
    on_phase_end(trainer, phase, stopped)   the phase is over ("max_epochs", "early_stopping", ...)

in the order they are listed. The trainer builds the standard ones from its options; a caller adds
its own (``callbacks=[...]``): a `Callback`, or any function ``f(trainer, record)`` called after
every epoch (e.g. to watch a test set without letting it choose anything).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Callback:
    """No-op hooks; subclasses override the moments they care about."""

    def on_phase_start(self, trainer, phase) -> None: ...

    def on_validation_start(self, trainer) -> None: ...

    def on_epoch_end(self, trainer, record: dict) -> None: ...

    def on_phase_end(self, trainer, phase, stopped: str) -> None: ...


class EpochFunction(Callback):
    """A plain function ``f(trainer, record)`` called after every epoch."""

    def __init__(self, function: Callable):
        self.function = function

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.function(trainer, record)


# ---------------------------------------------------------------------------- weights
def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of everything training can change: trainable parameters and all buffers."""
    state = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b.detach().clone() for name, b in model.named_buffers()})
    return state


@torch.no_grad()
def restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name, value in state.items():
        tensors[name].copy_(value)


class BestWeights(Callback):
    """Keeps a copy of the best epoch's weights and puts it back when the phase ends.

    Without validation the latest epoch is the best we know. With ``restore_best=False`` the last
    epoch is kept whatever the validation says (when ``val_data`` is only *watched*: a test set must
    never choose the epoch). On Ctrl-C the copy is what the model is left with.
    """

    def __init__(self, restore_best: bool = True):
        self.restore_best = restore_best
        self.state: dict[str, torch.Tensor] | None = None

    def on_phase_start(self, trainer, phase) -> None:
        self.state = None

    def on_epoch_end(self, trainer, record: dict) -> None:
        if record["improved"] or not self.restore_best:
            self.state = snapshot(trainer.model)

    def on_phase_end(self, trainer, phase, stopped: str) -> None:
        if self.state is None:
            return
        restore(trainer.model, self.state)
        history = trainer.history
        if (
            self.restore_best
            and trainer.val_data is not None
            and stopped != "interrupted"
            and history.best_epoch != trainer.epoch
        ):
            trainer.log(f"{trainer.name}: restored the best weights, epoch {history.best_epoch}{trainer.best_note()}")


class EarlyStopping(Callback):
    """Stop the phase once ``patience`` epochs in a row did not improve on the best validation value."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, trainer, record: dict) -> None:
        if trainer.val_data is None:
            return
        waited = trainer.epoch - (trainer.history.best_epoch or 0)
        if waited >= self.patience:
            trainer.stop(
                "early_stopping",
                f"{trainer.name}: no improvement of val {trainer.history.val_metric} "
                f"for {self.patience} epochs: stopping early",
            )


class Checkpoint(Callback):
    """``model.save(path)`` at every new best epoch and once more at the end of each phase."""

    def __init__(self, path, restore_best: bool = True):
        self.path, self.restore_best = path, restore_best

    def on_epoch_end(self, trainer, record: dict) -> None:
        if record["improved"] or not self.restore_best:
            trainer.model.save(self.path)

    def on_phase_end(self, trainer, phase, stopped: str) -> None:
        if trainer.best_weights.state is not None:  # the weights the phase ends with
            trainer.model.save(self.path)


class PreciseBatchNorm(Callback):
    """Re-estimate the trainable batch norms' statistics (`adlearn.train.batch_norm`) for the weights
    being validated — so a kept epoch carries its own statistics — or, without validation, once for
    the final weights."""

    def on_validation_start(self, trainer) -> None:
        trainer.run_precise_bn()

    def on_phase_end(self, trainer, phase, stopped: str) -> None:
        if trainer.val_data is None and trainer.best_weights.state is not None:
            trainer.run_precise_bn()


class EpochLog(Callback):
    """One printed line per epoch: loss(es), validation value, time."""

    def on_epoch_end(self, trainer, record: dict) -> None:
        limit = trainer.phase_limit
        steps = f" (step {trainer.global_step}{f'/{limit[1]}' if limit[1] else ''})"
        losses = record["losses"]
        shown = (
            f"loss {record['loss']:.4g}"
            if list(losses) in ([], ["loss"])
            else " ".join(f"{name} {value:.4g}" for name, value in losses.items())
        )
        phase = f" [{record['phase']}]" if len(trainer.phases) > 1 else ""
        line = (
            f"{trainer.name}{phase} epoch {trainer.epoch}{f'/{trainer.total_epochs}' if trainer.total_epochs else ''}"
            f"{steps}: {shown}"
        )
        if record["val"] is not None:
            line += f" | val {trainer.history.val_metric} {record['val']:.4f}{' *best' if record['improved'] else ''}"
        trainer.log(line + f" | {record['seconds']:.1f} s")
