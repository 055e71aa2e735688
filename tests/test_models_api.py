"""The model contract every registered model follows: fit / predict / save / load, errors."""

from __future__ import annotations

import pytest
import torch

import adlearn
from adlearn.models import NotFittedError, TrainedModel, available_models, create, get_model_class, load

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def fitted_padim(small_synthetic_root):
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset

    model = create("padim", backbone=BACKBONE, image_size=64, device="cpu", seed=0)
    train = MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], "train", transform=model.transform)
    return model.fit(train)


def test_registry_lists_and_creates_models():
    names = available_models()
    assert "padim" in names and names == sorted(names)
    assert get_model_class("PaDiM").name == "padim"
    with pytest.raises(ValueError, match="available: .*padim"):
        create("no_such_model")


def test_top_level_shortcuts():
    assert adlearn.create is create and adlearn.load is load


def test_predict_before_fit_is_a_clear_error():
    model = create("padim", backbone=BACKBONE, image_size=64, device="cpu")
    with pytest.raises(NotFittedError, match="call model.fit"):
        model.predict(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 64, 64), "unsqueeze"),
        ((1, 1, 64, 64), "3 channels"),
        ((1, 3, 32, 32), "configured for 64x64"),
    ],
)
def test_wrong_input_shapes_name_the_fix(fitted_padim, shape, message):
    with pytest.raises(ValueError, match=message):
        fitted_padim.predict(torch.zeros(shape))


def test_prediction_shapes(fitted_padim):
    prediction = fitted_padim.predict(torch.randn(3, 3, 64, 64))
    assert prediction.pred_score.shape == (3,)
    assert prediction.anomaly_map.shape == (3, 64, 64)


def test_fit_accepts_tensor_loader_and_dataset(small_synthetic_root):
    from torch.utils.data import DataLoader

    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset

    def fresh():
        return create("padim", backbone=BACKBONE, image_size=64, device="cpu", seed=0, n_features=20)

    train = MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], "train", transform=fresh().transform)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    probe = images[:2]
    by_dataset = fresh().fit(train).predict(probe).pred_score
    by_loader = fresh().fit(DataLoader(train, batch_size=5)).predict(probe).pred_score
    by_tensor = fresh().fit(images).predict(probe).pred_score
    torch.testing.assert_close(by_dataset, by_loader, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_dataset, by_tensor, rtol=1e-4, atol=1e-4)


def test_empty_training_data_is_an_error():
    model = create("padim", backbone=BACKBONE, image_size=64, device="cpu")
    with pytest.raises(ValueError, match="no training images"):
        model.fit(torch.zeros(0, 3, 64, 64))


def test_save_load_round_trip_gives_identical_predictions(fitted_padim, tmp_path):
    images = torch.randn(2, 3, 64, 64)
    before = fitted_padim.predict(images)
    path = fitted_padim.save(tmp_path / "padim.pt")
    restored = load(path)
    after = restored.predict(images)
    assert restored.config == fitted_padim.config
    assert torch.equal(before.pred_score, after.pred_score)
    assert torch.equal(before.anomaly_map, after.anomaly_map)


def test_load_rejects_foreign_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an adlearn checkpoint"):
        load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


def test_seed_controls_random_architecture_choices():
    a = create("padim", backbone=BACKBONE, device="cpu", seed=0).channel_index
    b = create("padim", backbone=BACKBONE, device="cpu", seed=0).channel_index
    c = create("padim", backbone=BACKBONE, device="cpu", seed=1).channel_index
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_name_per_step_across_models():
    """docs/design.md, "Step names": every model extracts features with ``extract_features``; none
    keeps one of the five older names."""
    import importlib

    old_names = ("generate_embedding", "get_features", "get_feature_map", "features", "normalized_features")
    for name in available_models():
        cls = get_model_class(name)
        assert callable(cls.extract_features) and callable(cls.predict_step), name
        assert not any(hasattr(cls, old) for old in old_names), name
        module = importlib.import_module(cls.__module__)
        if issubclass(cls, TrainedModel):  # the formulas, as module functions
            assert callable(getattr(module, f"{name}_loss")), name
            if cls.task == "segmentation":  # image-level models have no map
                assert callable(getattr(module, f"{name}_anomaly_map")), name


def test_adlearn_evaluate_is_callable_after_its_module_is_imported():
    import adlearn
    import adlearn.evaluate as module
    from adlearn.evaluate import evaluate

    assert adlearn.evaluate is module and callable(adlearn.evaluate)
    calls = []

    class Fake:
        pass

    original = module.evaluate
    try:
        module.evaluate = lambda *args, **kwargs: calls.append((args, kwargs)) or "ok"
        assert adlearn.evaluate(Fake, "data", batch_size=2) == "ok"
    finally:
        module.evaluate = original
    assert calls == [((Fake, "data"), {"batch_size": 2})] and evaluate is original


def test_mark_fitted_allows_predict_and_survives_save_load(tmp_path):
    """A model whose parts are trained outside ``fit`` (here: none, a fresh STFPM student) is declared
    ready with ``mark_fitted``; the flag is saved with the model, and ``mark_fitted(False)`` undoes it."""
    model = create("stfpm", backbone=BACKBONE, image_size=64, device="cpu", seed=0)
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(NotFittedError):
        model.predict(images)
    assert model.mark_fitted() is model and model.is_fitted
    before = model.predict(images)
    assert before.pred_score.shape == (2,) and before.anomaly_map.shape == (2, 64, 64)
    reloaded = load(model.save(tmp_path / "marked.pt"))
    assert reloaded.is_fitted
    assert torch.equal(reloaded.predict(images).pred_score, before.pred_score)
    model.mark_fitted(False)
    assert not model.is_fitted
    with pytest.raises(NotFittedError, match="call model.fit"):
        model.predict(images)
