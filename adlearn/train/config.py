"""`TrainingConfig`: every training option, declared once and checked once.

A trained model takes these as keywords (``adlearn.create("stfpm", max_epochs=20)``, or on the
command line ``--set max_epochs=20``); its class only states the paper's values in
``training_defaults``. Nothing else in the package declares a training option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

VAL_METRICS = ("auto", "loss", "image_auroc", "pixel_auroc")
VAL_ANOMALIES = ("none", "synthetic", "paired")
AMP_CHOICES = (True, False, None, "auto", "bf16", "fp16", "off", "none", "no")


@dataclass(frozen=True)
class TrainingConfig:
    """How long to train, when to stop, how to step.

    Attributes:
        max_epochs: stop after this many epochs (None: no epoch limit; then ``max_steps`` is needed).
        max_steps: stop after this many training batches, which may end an epoch early (a model trained in
            phases: at most this many in each phase).
        patience: early stopping — stop once this many epochs in a row did not improve the
            validation metric (None: never). Only used when there is validation data.
        min_delta: an improvement must beat the best value by more than this.
        val_metric: ``"auto"`` (pixel AUROC with masks, image AUROC with labels, else the loss),
            ``"loss"``, ``"image_auroc"`` or ``"pixel_auroc"``.
        val_fraction: hold out this share of the training images as validation data when ``fit``
            gets none (`adlearn.data.hold_out`).
        val_anomalies: ``"none"``; ``"synthetic"``: paste Perlin-noise defects into half of the
            held-out images (`adlearn.data.SyntheticAnomalies`), a labelled validation set;
            ``"paired"``: keep every held-out image clean and add it ``val_defects`` more times, each
            with a different defect (more defect pixels from the same images, for a steadier signal).
        val_defects: defective copies per held-out image with ``val_anomalies="paired"``.
        gradient_clip_val: clip the gradients' global L2 norm to this (0: no clipping).
        amp: automatic mixed precision — ``"auto"`` (CUDA only), ``"bf16"``, ``"fp16"`` or False.
        precise_bn: re-estimate the trained batch norms' running statistics for the current weights
            before each validation and at the end (`adlearn.train.recalibrate_batch_norm`).
        num_workers: DataLoader worker processes.
    """

    max_epochs: int | None = None
    max_steps: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    val_metric: str = "auto"
    val_fraction: float = 0.0
    val_anomalies: str = "none"
    val_defects: int = 1
    gradient_clip_val: float = 0.0
    amp: bool | str = "auto"
    precise_bn: bool = False
    num_workers: int = 0

    def __post_init__(self):
        def fail(key, value, allowed):
            raise ValueError(f"training option {key}={value!r}: {allowed}")

        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("training options: give max_epochs or max_steps (or both): the training loop needs an end")
        for key in ("max_epochs", "max_steps", "patience"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                fail(key, value, "must be a positive integer, or None")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            fail("min_delta", self.min_delta, "must be a number >= 0")
        if self.val_metric not in VAL_METRICS:
            fail("val_metric", self.val_metric, f"use one of {', '.join(VAL_METRICS)}")
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 <= self.val_fraction < 1.0):
            fail("val_fraction", self.val_fraction, "must be in [0, 1), e.g. 0.2")
        if self.val_anomalies not in VAL_ANOMALIES:
            fail("val_anomalies", self.val_anomalies, f"use one of {', '.join(VAL_ANOMALIES)}")
        if self.val_anomalies != "none" and self.val_fraction == 0:
            raise ValueError(
                f"training option val_anomalies={self.val_anomalies!r} adds anomalies to held-out "
                "training images: also give val_fraction (e.g. 0.2)"
            )
        if isinstance(self.val_defects, bool) or not isinstance(self.val_defects, int) or self.val_defects < 1:
            fail("val_defects", self.val_defects, "must be a positive integer (defective copies per held-out image)")
        if not (isinstance(self.gradient_clip_val, (int, float)) and self.gradient_clip_val >= 0):
            fail("gradient_clip_val", self.gradient_clip_val, "must be a number >= 0 (0: no clipping)")
        if self.amp not in AMP_CHOICES:
            fail("amp", self.amp, "use 'auto', 'bf16', 'fp16' or False")
        if not isinstance(self.precise_bn, bool):
            fail("precise_bn", self.precise_bn, "must be True or False")
        if not (isinstance(self.num_workers, int) and self.num_workers >= 0):
            fail("num_workers", self.num_workers, "must be an integer >= 0")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def split(cls, options: dict) -> tuple[dict, dict]:
        """(training options, the rest) of a keyword dict."""
        keys = set(cls.keys())
        return ({k: v for k, v in options.items() if k in keys}, {k: v for k, v in options.items() if k not in keys})

    def replace(self, **changes) -> TrainingConfig:
        """A copy with some options changed (checked again)."""
        unknown = sorted(set(changes) - set(self.keys()))
        if unknown:
            raise ValueError(f"unknown training option {unknown[0]!r}; the options are: {', '.join(self.keys())}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)
