"""What every model shares: the ``fit`` / ``predict`` / ``save`` / ``load`` contract.

    model = adlearn.models.create("padim", backbone="efficientnet_lite0")
    model.fit(train_dataset)                 # a Dataset of dict items, a DataLoader, or a (N,3,H,W) tensor
    prediction = model.predict(images)       # images: (B, 3, H, W), normalized as `model.transform` does
    prediction.pred_score                    # (B,)   higher = more anomalous
    prediction.anomaly_map                   # (B, H, W) or None for classification-only models
    model.save("padim.pt"); adlearn.models.load("padim.pt")   # identical predictions

Two families build on `AnomalyModel`:

- `MemoryBankModel` — one pass over the training data collects features (``collect``), then one
  ``fit_bank`` computes the statistics / memory bank. No optimizer (PaDiM, PatchCore, DFKDE, DFM...).
- `TrainedModel` — an optimizer and the shared loop in ``adlearn.train`` (STFPM, FastFlow...).

Randomness: building a model (``__init__``), ``fit`` and ``predict`` each run inside
`adlearn.utils.seeded(model.seed)` — every subclass's methods are wrapped once, in
`AnomalyModel.__init_subclass__`. Torch's default layer initialisation, dropout and any other
draw from the global generators repeat for the same seed, and the caller's own generators
(`random`, `np.random`, torch CPU and CUDA) are exactly as they were before the call.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlearn.components.dynamic_buffer import DynamicBufferMixin, NotFittedError
from adlearn.prediction import Prediction  # noqa: F401  (re-exported: models import it from here)
from adlearn.utils import resolve_device, seeded

CHECKPOINT_FORMAT = 1


_SEEDED = threading.local()  # ids of the models inside a seeded call, per thread


@contextmanager
def _seeded_call(model: nn.Module, seed: int, device: torch.device | None) -> Iterator[None]:
    """`seeded(seed)` around the outermost call of a model's ``__init__`` / ``fit`` / ``predict``; the
    ``super()`` calls and a ``predict`` inside ``fit`` run in the same block, not reseeded."""
    active = _SEEDED.__dict__.setdefault("models", set())
    if id(model) in active:
        yield
        return
    active.add(id(model))
    try:
        with seeded(seed, device):
            yield
    finally:
        active.discard(id(model))


def _seed_of_call(init: Callable, kwargs: dict) -> tuple[int, torch.device | None]:
    """The ``seed`` and ``device`` a model is being built with (the signature's defaults when not given)."""
    parameters = inspect.signature(init).parameters
    defaults = {
        name: parameters[name].default
        for name in ("seed", "device")
        if name in parameters and parameters[name].default is not inspect.Parameter.empty
    }
    try:
        seed = int(kwargs.get("seed", defaults.get("seed", 0)))
    except (TypeError, ValueError):
        seed = 0  # __init__ itself says what is wrong with it
    try:
        device = resolve_device(kwargs.get("device", defaults.get("device", "auto")))
    except (RuntimeError, TypeError, ValueError):
        device = None  # __init__ itself raises the clear error
    return seed, device


def _seeded_init(init: Callable) -> Callable:
    """``__init__`` run inside `seeded(seed)`: the same seed builds the same layers, global state untouched."""

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        with _seeded_call(self, *_seed_of_call(init, kwargs)):
            return init(self, *args, **kwargs)

    wrapper._adlearn_seeded = True
    return wrapper


def _seeded_method(method: Callable) -> Callable:
    """``fit`` / ``predict`` run inside `seeded(self.seed)` (once, however many ``super()`` calls nest)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _seeded_call(self, self.seed, self.device):
            return method(self, *args, **kwargs)

    wrapper._adlearn_seeded = True
    return wrapper


class AnomalyModel(DynamicBufferMixin, nn.Module):
    """Base class. Subclasses call ``super().__init__(...)`` then ``self.save_hyperparameters()``."""

    name: str = "anomaly_model"  # each model states its registered name (adlearn.models.registry.MODEL_CLASSES)
    task: str = "segmentation"  # or "classification" (no anomaly map)
    learning_type: str = "one_class"
    # Named sets of options: "paper" (the paper's settings; the defaults unless a measured setting
    # beats them, see the model's docstring) and "cpu" (the recipe for a 2-core laptop on a real
    # category). ``adlearn.create(name, preset="cpu", **options)``: explicit options win.
    presets: ClassVar[dict[str, dict]] = {}
    # The label threshold (score > threshold: anomalous), None until chosen: adlearn.export.calibrate_threshold
    # sets it from held-out normal images; save/load keep it, adlearn export/predict use it.
    threshold: float | None = None

    @classmethod
    def preset(cls, name: str | None) -> dict:
        """The options of preset ``name`` ("paper" without an entry: the defaults, no options)."""
        if name is None:
            return {}
        available = sorted(set(cls.presets) | {"paper"})
        if name not in available:
            raise ValueError(f"{cls.name} has no preset {name!r}; presets: {', '.join(available)}")
        return dict(cls.presets.get(name, {}))

    def __init_subclass__(cls, **kwargs):
        """Wrap the subclass's own ``__init__``, ``fit`` and ``predict`` in `seeded`: models use their own
        random stream and never touch the caller's global generators."""
        super().__init_subclass__(**kwargs)
        for name, wrap in (("__init__", _seeded_init), ("fit", _seeded_method), ("predict", _seeded_method)):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_adlearn_seeded", False):
                setattr(cls, name, wrap(method))

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int] = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        super().__init__()
        self.image_size = image_size
        self.center_crop = center_crop
        self.seed = seed
        self.batch_size = batch_size
        self._device = resolve_device(device)
        self.config: dict = {}
        self.register_buffer("_is_fitted", torch.tensor(False))

    # ----------------------------------------------------------------- configuration
    def save_hyperparameters(self) -> None:
        """Record the calling ``__init__``'s arguments in ``self.config`` (saved with the weights)."""
        frame = inspect.currentframe().f_back
        info = inspect.getargvalues(frame)
        config = {name: info.locals[name] for name in info.args if name != "self"}
        if info.keywords:
            config.update(info.locals[info.keywords])
        self.config = {key: value for key, value in config.items() if not key.startswith("_")}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the images the model expects, after resize and optional center crop."""
        size = self.center_crop or self.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def transform(self):
        from adlearn.data import ImageTransform

        return ImageTransform(image_size=self.image_size, center_crop=self.center_crop)

    @property
    def is_fitted(self) -> bool:
        return bool(self._is_fitted)

    def mark_fitted(self, fitted: bool = True) -> AnomalyModel:
        """Declare the model ready to ``predict`` (or not, with ``fitted=False``) without calling ``fit``.

        For parts trained or loaded outside ``fit``: a notebook that runs one training step by hand, or
        weights copied in with ``load_state_dict``. ``fit`` and ``adlearn.load`` set the flag themselves.
        The flag is a buffer, so it is saved with the model. Returns the model, for chaining.
        """
        self._is_fitted.fill_(bool(fitted))
        return self

    # ----------------------------------------------------------------- input handling
    def check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name}.predict expects a tensor of images, got {type(images).__name__}")
        if images.ndim == 3:
            raise ValueError(
                f"{self.name} expects a batch (B, 3, H, W); got one image {tuple(images.shape)}: "
                "use images.unsqueeze(0)"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{self.name} expects images of shape (B, 3, H, W); got {tuple(images.shape)}. "
                "Grayscale images need 3 channels: images.expand(-1, 3, -1, -1)"
            )
        if tuple(images.shape[2:]) != self.input_size:
            raise ValueError(
                f"{self.name} was configured for {self.input_size[0]}x{self.input_size[1]} images; "
                f"got {images.shape[2]}x{images.shape[3]}. Resize them with model.transform, "
                f"or create the model with image_size={images.shape[2]}"
            )

    def batches(self, data, desc: str | None = None) -> Iterator[torch.Tensor]:
        """Yield image batches ``(B, 3, H, W)`` on the model's device from a tensor, Dataset or DataLoader."""
        if isinstance(data, torch.Tensor):
            if len(data) == 0:
                raise ValueError(f"{self.name}: no training images were given (an empty tensor)")
            iterable = data.split(self.batch_size)
            total = len(iterable)
        else:
            if isinstance(data, Dataset) and not isinstance(data, DataLoader):
                if len(data) == 0:
                    raise ValueError(f"{self.name}: the dataset is empty — nothing to train on")
                data = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            iterable = data
            total = len(data) if hasattr(data, "__len__") else None
        if desc:
            from tqdm.auto import tqdm

            iterable = tqdm(iterable, desc=desc, total=total, leave=False)
        for batch in iterable:
            images = (
                batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
            )
            self.check_images(images)
            yield images.to(self._device, non_blocking=True)

    # ----------------------------------------------------------------- the contract
    def fit(self, data) -> AnomalyModel:
        raise NotImplementedError

    def predict_step(self, images: torch.Tensor) -> Prediction:
        raise NotImplementedError

    @torch.no_grad()
    @_seeded_method
    def predict(self, images: torch.Tensor) -> Prediction:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted yet: call model.fit(train_data) before predict")
        self.check_images(images)
        self.eval()
        return self.predict_step(images.to(self._device))

    def to_device(self) -> AnomalyModel:
        return self.to(self._device)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": self.name,
                "config": self.config,
                "state_dict": self.state_dict(),
                "threshold": self.threshold,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> AnomalyModel:
        return load(path, device=device)


def load(path: str | Path, device: str | None = None) -> AnomalyModel:
    """Rebuild a saved model (no weight download: backbone weights come from the checkpoint)."""
    from adlearn.models.registry import get_model_class

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated zip, a text file, random bytes...
        raise ValueError(
            f"{path} could not be read as an adlearn checkpoint — the file is corrupt or truncated "
            f"(was it still being written?); save the model again. ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} is not an adlearn checkpoint (saved with model.save)")
    config = dict(checkpoint["config"])
    if "pretrained" in config:
        config["pretrained"] = "none"  # the weights are in the state dict
    if device is not None:
        config["device"] = device
    model = get_model_class(checkpoint["model"])(**config)
    model.load_state_dict(checkpoint["state_dict"])
    model.config = dict(checkpoint["config"], **({"device": device} if device else {}))
    model.threshold = checkpoint.get("threshold")  # absent from checkpoints saved before thresholds
    return model.to_device()


class MemoryBankModel(AnomalyModel):
    """One pass collects features from the training images; one ``fit_bank`` call fits on them."""

    def collect(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one training batch (any shape whose first dim is the batch)."""
        raise NotImplementedError

    def fit_bank(self, features: torch.Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def fit(self, data) -> MemoryBankModel:
        self.to_device().eval()
        collected = [self.collect(images) for images in self.batches(data, desc=f"{self.name}: features")]
        if not collected:
            raise ValueError(f"{self.name}: no training images were given")
        self.fit_bank(torch.cat(collected))
        self.mark_fitted()
        return self


class TrainedModel(AnomalyModel):
    """A model trained by gradient descent with the shared loop of `adlearn.train`.

    A subclass implements::

        configure_optimizers() -> optimizer | (optimizer, scheduler) | {name: optimizer or (optimizer, scheduler)}
        training_step(batch, trainer) -> loss | {name: loss}   # batch: the dataset's dict batch on the device
        predict_step(images) -> Prediction

    and states its paper's training settings in ``training_defaults`` (e.g. ``{"max_epochs": 100,
    "patience": 5}``). It declares no training keyword of its own: every option of
    `adlearn.train.TrainingConfig` (``max_epochs``, ``patience``, ``val_fraction``, ``precise_bn``...)
    reaches it through ``**options`` and is checked once there; ``model.train_config`` holds them
    (and ``model.max_epochs`` etc. read them).

    Optional: ``automatic_optimization = False`` for a model that steps several optimizers itself
    (it calls ``trainer.optimizer_step(loss, name)`` in ``training_step`` and defines
    ``validation_step``); ``training_phases()`` for a model trained in stages; the hooks
    ``on_fit_start(data, trainer)``, ``on_epoch_start(trainer)``, ``on_fit_end(data, trainer)``;
    ``batch_norm_forward(batch)`` to run only the part whose batch norms ``precise_bn`` re-estimates.
    After ``fit``, ``model.history`` holds the learning curve; it is saved with the model.
    """

    training_defaults: ClassVar[dict] = {"max_epochs": 100}
    automatic_optimization: ClassVar[bool] = True
    scheduler_interval: ClassVar[str] = "epoch"  # or "step": when the loop steps the schedulers

    def __init__(self, **options):
        from adlearn.train import History, TrainingConfig

        training, rest = TrainingConfig.split(options)
        accepted = set(inspect.signature(AnomalyModel.__init__).parameters) - {"self"}
        unknown = sorted(set(rest) - accepted)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown option {unknown[0]!r}. Training options: "
                f"{', '.join(TrainingConfig.keys())}; common options: {', '.join(sorted(accepted))}"
            )
        super().__init__(**rest)
        self.train_config = TrainingConfig(**{**self.training_defaults, **training})
        self.history = History()

    def __getattr__(self, name: str):
        # model.max_epochs, model.precise_bn, ... read the training configuration
        config = self.__dict__.get("train_config")
        if config is not None and name in config.keys():
            return getattr(config, name)
        return super().__getattr__(name)

    def configure_optimizers(self):
        raise NotImplementedError

    def training_step(self, batch: dict, trainer) -> torch.Tensor | dict:
        raise NotImplementedError

    def validation_step(self, batch: dict) -> torch.Tensor | dict:
        """The loss on validation images, no optimizer step. Default (one optimizer): the training
        loss. A model that steps its own optimizers must define it."""
        if not self.automatic_optimization:
            raise NotImplementedError(
                f"{self.name} steps its own optimizers (automatic_optimization=False): "
                "define validation_step(batch) returning its loss(es) without stepping"
            )
        return self.training_step(batch, None)

    def training_phases(self) -> list | None:
        """Stages of training (`adlearn.train.Phase`), or None for one stage of ``train_config``'s length."""
        return None

    def trainer(self, **options):
        """The `adlearn.train.Trainer` that ``fit`` uses. ``options``: training options overriding the
        model's, and the trainer's own (``checkpoint_path=``, ``val_metric_fn=``, ``callbacks=``,
        ``verbose=False``, ``restore_best=False``...)."""
        from adlearn.train import Trainer

        options.setdefault("seed", self.seed)
        options.setdefault("batch_size", self.batch_size)
        return Trainer(self, self.train_config, **options)

    def fit(self, data, val_data=None, **options) -> TrainedModel:
        """Train on ``data`` (Dataset of dict items, DataLoader or (N,3,H,W) tensor); returns self.

        ``val_data`` (optional; or ``val_fraction`` of ``data`` held out) enables validation after
        each epoch and early stopping with ``patience``; ``options`` go to `trainer`.
        """
        trainer = self.trainer(**options)
        config = trainer.config
        if val_data is None and config.val_fraction > 0:
            from adlearn.data import SyntheticAnomalies, hold_out

            data, val_data = hold_out(data, config.val_fraction, seed=self.seed)
            if config.val_anomalies != "none":  # "synthetic": every second image; "paired": all, k times
                paired = config.val_defects if config.val_anomalies == "paired" else None
                val_data = SyntheticAnomalies(val_data, seed=self.seed, defects_per_image=paired)
        self.history = trainer.history  # filled in as training goes (also on Ctrl-C)
        trainer.fit(data, val_data)
        return self

    # The learning curve travels with the weights (torch saves "extra state" with the state dict).
    def get_extra_state(self) -> dict:
        return {"history": self.history.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        from adlearn.train import History

        self.history = History.from_dict(state.get("history", {}))


__all__ = ["AnomalyModel", "MemoryBankModel", "NotFittedError", "Prediction", "TrainedModel", "load"]
