"""One training batch: the optimizers of the current phase and the step they take.

`BatchSteps` owns what happens inside a batch — automatic or manual optimization, mixed precision,
the gradient scaler, clipping, freezing what a phase does not train; `adlearn.train.Trainer` adds
the epochs, validation and callbacks around it.
"""

from __future__ import annotations

import torch
from torch import nn

from adlearn.train.config import TrainingConfig
from adlearn.train.devices import batch_to_device, resolve_amp
from adlearn.train.history import History
from adlearn.train.phases import Phase, optimizer_pairs
from adlearn.train.validation import total_loss


class BatchSteps:
    """The per-batch half of the `Trainer` (see `adlearn.train.loop`)."""

    def __init__(self, model: nn.Module, config: TrainingConfig):
        self.model, self.config = model, config
        self.device = getattr(model, "device", None) or torch.device("cpu")
        self.amp_dtype = resolve_amp(config.amp, self.device)
        # fp16 has a small range: scale the loss up before backward so gradients do not underflow.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.automatic = getattr(model, "automatic_optimization", True)
        self.scheduler_interval = getattr(model, "scheduler_interval", "epoch")
        self.name = getattr(model, "name", type(model).__name__)
        self.history = History()
        self.global_step = 0  # training batches, all phases together
        self.last_grad_norm: float | None = None  # before clipping, of the last step
        self.optimizers: dict[str, tuple] | None = None
        self.phase: Phase | None = None
        self._frozen: list[nn.Parameter] = []
        self._stop_reason: str | None = None

    # ------------------------------------------------------------------ the optimizers
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The (first) optimizer of the current phase."""
        return next(iter(self.optimizers.values()))[0]

    @property
    def scheduler(self):
        return next(iter(self.optimizers.values()))[1]

    @property
    def phase_limit(self) -> tuple[int | None, int | None]:
        return (self.phase.max_epochs, self.phase.max_steps) if self.phase else (None, None)

    def begin_phase(self, phase: Phase) -> None:
        """Freeze what the phase does not train and build its optimizers."""
        self.phase, self.phase_epoch, self.phase_steps = phase, 0, 0
        self._frozen = []
        if phase.modules is not None:
            trained = {id(p) for module in phase.modules for p in module.parameters()}
            self._frozen = [p for p in self.model.parameters() if p.requires_grad and id(p) not in trained]
            for parameter in self._frozen:
                parameter.requires_grad_(False)
        self.optimizers = optimizer_pairs(phase.configure_optimizers())
        if self.automatic and len(self.optimizers) > 1:
            raise ValueError(
                f"{self.name}: configure_optimizers returned {len(self.optimizers)} optimizers; with "
                "several, set automatic_optimization = False and step each in training_step with "
                "trainer.optimizer_step(loss, name)"
            )
        self.history.best_epoch = self.history.best_value = None
        self._stop_reason = None

    def end_phase(self) -> None:
        for parameter in self._frozen:
            parameter.requires_grad_(True)
        self._frozen = []

    def optimizer_step(self, loss: torch.Tensor, name: str | None = None) -> None:
        """zero_grad, backward, clip, step — for the optimizer ``name`` (optional with only one)."""
        if name is None:
            if len(self.optimizers) > 1:
                raise ValueError(
                    f"{self.name}: several optimizers ({', '.join(self.optimizers)}): "
                    "name the one to step, trainer.optimizer_step(loss, name)"
                )
            name = next(iter(self.optimizers))
        elif name not in self.optimizers:
            raise KeyError(
                f"{self.name}: no optimizer named {name!r} in this phase; have: {', '.join(self.optimizers)}"
            )
        optimizer, scheduler = self.optimizers[name]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.name}: the loss became {loss.item()} at step {self.global_step + 1}; "
                "try a smaller learning rate, gradient_clip_val=1.0, or amp=False"
            )
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):  # backward runs outside autocast
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)  # clip the true gradients
            else:
                loss.backward()
        if self.config.gradient_clip_val > 0:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            self.last_grad_norm = float(nn.utils.clip_grad_norm_(parameters, self.config.gradient_clip_val))
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped if grads overflowed
        else:
            optimizer.step()
        if scheduler is not None and self.scheduler_interval == "step":
            scheduler.step()
        self._stepped = True

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_mode(self) -> None:
        if self.phase is not None and self.phase.modules is not None:
            self.model.eval()  # the frozen parts' batch norms keep their statistics
            for module in self.phase.modules:
                module.train()
        else:
            self.model.train()

    def training_step(self, batch) -> float:
        """One training batch (one optimizer step, or the model's own steps); returns its loss."""
        if self.optimizers is None:
            self.setup()
        batch = batch_to_device(batch, self.device)
        if "image" in batch and hasattr(self.model, "check_images"):
            self.model.check_images(batch["image"])
        self._train_mode()
        self._stepped = False
        step = self.phase.step if self.phase is not None and self.phase.step is not None else self.model.training_step
        with self.autocast():
            output = step(batch, self)
        if self.automatic:
            self.optimizer_step(total_loss(output))
        if self.scaler is not None and self._stepped:
            self.scaler.update()  # once per batch, after every optimizer stepped
        self.global_step += 1
        self.phase_steps += 1
        named = output if isinstance(output, dict) else {"loss": output}
        self.last_losses = {
            name: float(value.detach() if torch.is_tensor(value) else value) for name, value in named.items()
        }
        value = self.last_losses["loss"] if "loss" in self.last_losses else float(sum(self.last_losses.values()))
        self.history.step_loss.append(value)
        return value

    def validation_step(self, batch):
        """One batch's validation loss: the phase's own step given no trainer (so it cannot step an
        optimizer; automatic optimization only), else ``model.validation_step``."""
        if self.automatic and self.phase is not None and self.phase.step is not None:
            return self.phase.step(batch, None)
        return self.model.validation_step(batch)

    def _out_of_steps(self) -> bool:
        return self.phase.max_steps is not None and self.phase_steps >= self.phase.max_steps
