"""`History`: what happened during training, one entry per epoch, and its learning-curve plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class History:
    """The record of a training run (saved with the model, so a loaded model keeps its curve).

    ``loss`` is the epoch's mean training loss: the model's one loss, or for a model that returns
    several named losses their ``"loss"`` entry if it has one, else their sum. ``losses`` keeps every
    named loss per epoch (``history.losses["generator"]``).
    """

    epoch: list[int] = field(default_factory=list)  # 1, 2, ... (continues across phases)
    loss: list[float] = field(default_factory=list)  # mean training loss of the epoch
    losses: dict[str, list[float]] = field(default_factory=dict)  # name -> mean per epoch
    val: list[float | None] = field(default_factory=list)  # validation metric (None: no validation)
    lr: list[float] = field(default_factory=list)  # first optimizer's learning rate, end of epoch
    seconds: list[float] = field(default_factory=list)  # wall time of the epoch (training only)
    phase: list[str] = field(default_factory=list)  # the training phase each epoch belongs to
    step_loss: list[float] = field(default_factory=list)  # every training batch's loss
    val_metric: str | None = None  # name of the metric in ``val``
    best_epoch: int | None = None
    best_value: float | None = None
    steps: int = 0  # training batches processed
    stopped: str = ""  # "max_epochs" | "max_steps" | "early_stopping" | "interrupted"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> History:
        return cls(**{key: value for key, value in values.items() if key in cls.__dataclass_fields__})

    def record_epoch(
        self, epoch: int, losses: dict[str, float], val: float | None, lr: float, seconds: float, phase: str
    ) -> None:
        """Append one epoch (``losses``: the epoch's mean of every named loss)."""
        self.epoch.append(epoch)
        self.loss.append(losses["loss"] if "loss" in losses else float(sum(losses.values())))
        for name, value in losses.items():
            # a loss that first appears in a later phase is padded with None for the epochs before
            self.losses.setdefault(name, [None] * (len(self.epoch) - 1)).append(value)
        for values in self.losses.values():
            if len(values) < len(self.epoch):
                values.append(None)
        self.val.append(val)
        self.lr.append(lr)
        self.seconds.append(seconds)
        self.phase.append(phase)

    def plot(self, ax=None, title: str | None = None):
        """Learning curve: training loss per epoch, and the validation metric on a second axis.

        Draws into ``ax`` if given; returns the matplotlib ``Figure`` (a notebook shows it once).
        """
        if ax is None:
            from matplotlib.figure import Figure  # no pyplot: no global state, no window

            ax = Figure(figsize=(5.5, 3.2), layout="constrained").subplots()
        named = {name: values for name, values in self.losses.items() if name != "loss"}
        if len(named) > 1:  # several named losses (e.g. generator and discriminator): one line each
            for name, values in named.items():
                points = [(e, v) for e, v in zip(self.epoch, values) if v is not None]
                ax.plot(*zip(*points), "o-", label=name)
            ax.legend(loc="upper right", fontsize="small")
        else:
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
        for start in (e for i, e in enumerate(self.epoch) if i and self.phase[i] != self.phase[i - 1]):
            ax.axvline(start - 0.5, color="black", lw=0.6)  # where a new phase begins
        ax.set_title(title or "learning curve")
        return ax.figure
