"""The contract every registered model keeps (docs/design.md, "Models"), checked once for all of them.

For each model in `adlearn.models.available_models()`, in a tiny configuration (64 px — 128 for CS-Flow,
whose three scales need it —, the offline efficientnet_lite0 backbone, one or two training steps):

* a tiny fit runs and returns the model itself;
* save → load gives identical predictions (scores, maps and masks, bit for bit) and, for trained
  models, the same training history;
* two fits with the same seed give identical scores and maps;
* ``predict`` before ``fit`` is a `NotFittedError` that says to call ``fit``;
* a 1-channel or 4-channel batch is a ``ValueError`` naming the expected 3 channels.

A new model adds its tiny configuration to ``TINY`` in `tests/tiny_models.py`. The per-model test files keep only each paper's
own mathematics.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from tiny_models import TINY, tiny_clips  # tests/tiny_models.py: pytest puts tests/ on the path

from adlearn.models import NotFittedError, TrainedModel, available_models, create, get_model_class, load

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

MODELS = sorted(TINY)


def make(name: str):
    return create(name, device="cpu", seed=0, **TINY[name])


@pytest.fixture(scope="module")
def images(synthetic_split):
    """``images(size) -> (train (12, 3, s, s), probe (4, 3, s, s))``: the small synthetic category, normal
    training images and test images (normal and defective)."""
    from adlearn.data import ImageTransform

    cache = {}

    def at(size: int):
        if size not in cache:
            transform = ImageTransform(image_size=size)
            cache[size] = synthetic_split(transform, "train")[1], synthetic_split(transform, "test")[1][::3][:4]
        return cache[size]

    return at


def fit(name: str, images):
    """A fresh tiny model fitted on the training images: ``(model, what fit returned, probe images)``."""
    model = make(name)
    is_video = getattr(model, "input_kind", "image") == "video"  # AI-VAD: clips (B, T, 3, H, W) of videos
    train, probe = tiny_clips(model.input_size[0]) if is_video else images(model.input_size[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "few training images": the point here is the contract
        returned = model.fit(train, verbose=False) if isinstance(model, TrainedModel) else model.fit(train)
    return model, returned, probe


@pytest.fixture(scope="module")
def fitted(images):
    """``fitted(name) -> (model, returned, probe)``, each model fitted once for the module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = fit(name, images)
        return cache[name]

    return get


def assert_same_prediction(a, b) -> None:
    """Scores, maps and masks (U-Flow decides one itself) bit for bit; None where the model gives none."""
    for field in ("pred_score", "anomaly_map", "pred_mask"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        assert x is None or torch.equal(x, y), field


def test_every_registered_model_has_a_tiny_configuration():
    assert set(TINY) == set(available_models()), (
        "add the new model's tiny configuration to TINY in tests/tiny_models.py"
    )


@pytest.mark.parametrize("name", MODELS)
def test_tiny_fit_runs_and_returns_the_model(name, fitted):
    model, returned, probe = fitted(name)
    assert returned is model and model.is_fitted
    prediction = model.predict(probe)
    assert prediction.pred_score.shape == (len(probe),) and prediction.pred_score.isfinite().all()
    if model.task == "classification":
        assert prediction.anomaly_map is None
    else:
        assert prediction.anomaly_map.shape == (len(probe), *model.input_size)
        assert prediction.anomaly_map.isfinite().all()


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_gives_identical_predictions(name, fitted, tmp_path):
    model, _, probe = fitted(name)
    restored = load(model.save(tmp_path / f"{name}.pt"))
    assert type(restored) is type(model) and restored.config == model.config
    assert_same_prediction(restored.predict(probe), model.predict(probe))
    if isinstance(model, TrainedModel):  # the learning curve travels with the weights
        assert restored.history == model.history and restored.history.steps > 0


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_identical_scores(name, fitted, images):
    model, _, probe = fitted(name)
    again, _, _ = fit(name, images)
    assert_same_prediction(again.predict(probe), model.predict(probe))


@pytest.mark.parametrize("name", MODELS)
def test_predict_before_fit_says_to_call_fit(name):
    model = make(name)
    frames = (2,) if getattr(model, "input_kind", "image") == "video" else ()  # a video model takes clips
    with pytest.raises(NotFittedError, match=r"call model\.fit"):
        model.predict(torch.zeros(1, *frames, 3, *model.input_size))


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("name", MODELS)
def test_wrong_channel_count_names_the_expected_channels(name, channels, fitted):
    model, _, _ = fitted(name)
    if getattr(model, "input_kind", "image") == "video":
        with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\).*3 channels"):
            model.predict(torch.zeros(2, 2, channels, *model.input_size))
        return
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*3 channels"):
        model.predict(torch.zeros(2, channels, *model.input_size))


TRAINED = [name for name in MODELS if issubclass(get_model_class(name), TrainedModel)]


@pytest.mark.parametrize("name", TRAINED)
def test_cli_evaluate_passes_the_options_and_saves_what_it_trained(name, small_synthetic_root, tmp_path, capsys):
    # `adlearn evaluate NAME --set KEY=VALUE ...` on the small synthetic category: every option reaches the
    # model (one optimizer step here), the epoch log says so, and --save / --json write what was trained.
    from adlearn.cli import main
    from adlearn.data import SYNTHETIC_CATEGORIES

    options = {**TINY[name], "max_steps": 1}
    settings = [item for key, value in options.items() for item in ("--set", f"{key}={value}")]
    paths = ["--save", str(tmp_path / "m.pt"), "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "f.png")]
    location = ["--root", str(small_synthetic_root), "--category", SYNTHETIC_CATEGORIES[1], "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", name, *location, *settings, *paths]) == 0
    captured = capsys.readouterr()
    assert re.search(rf"^{name} (\[\w+\] )?epoch 1\b", captured.out, re.MULTILINE)
    saved = load(tmp_path / "m.pt")
    assert {key: saved.config[key] for key in options} == options
    # max_steps=1 reached the loop: one step in one epoch (per phase, for a model trained in phases)
    assert saved.history.steps == len(saved.history.epoch) == len(set(saved.history.phase)) and saved.is_fitted
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["task"] == saved.task and 0.0 <= results["image_auroc"] <= 1.0
    if saved.task == "classification":  # an image-level model: no pixel metric and no map figure, said so
        assert results["pixel_auroc"] is None and "no pixel metrics" in captured.out
        assert "no figure" in captured.err and not (tmp_path / "f.png").exists()
    else:
        assert 0.0 <= results["pixel_auroc"] <= 1.0 and "note" not in results and (tmp_path / "f.png").exists()
    if name == "uflow":  # U-Flow decides a segmentation itself (its NFA mask): its F1 is reported too
        assert "pixel_f1_mask" in results
