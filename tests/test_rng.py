"""Models draw from their own random generators: building, fitting, predicting, saving and loading a model
leave the caller's global generators (`random`, `np.random`, torch) exactly as they were, and the same seed
still gives the same scores for every registered model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tiny_models import TINY as TINY_MODELS

from adlearn.models import TrainedModel, available_models, create, get_model_class, load
from adlearn.utils import RandomStream, numpy_generator, seed_everything, seeded, torch_generator

# Every registered model at its smallest; backbones with random weights, so that drawing them at
# construction is part of what must repeat and must leave the caller's generators alone.
TINY = {
    # (WinCLIP names its encoder's weights ``weights``; its tiny tower is random already)
    name: {**options, "pretrained": "none"} if "backbone" in options and "weights" not in options else options
    for name, options in TINY_MODELS.items()
}
SLOW = {"csflow", "dsr", "efficient_ad"}  # a few seconds more per run than the others


def global_state() -> tuple:
    """Every global generator's state, as bytes (a torch CUDA one too where CUDA is in use)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return (
        repr(random.getstate()),
        np.random.get_state()[1].tobytes(),
        np.random.get_state()[2:],
        torch.get_rng_state().numpy().tobytes(),
        tuple(state.numpy().tobytes() for state in cuda),
    )


def scramble_globals(seed: int) -> None:
    """Put the global generators somewhere no model would seed them: a state mid-way through a stream."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.random(), np.random.rand(3), torch.rand(5)


@pytest.fixture
def tiny_natural_images(monkeypatch):
    """EfficientAD's penalty and DSR's phase 3 crop natural photographs; decoding the shipped ones takes
    seconds, so three small random 'photographs' stand in for them."""
    import adlearn.data.natural_images as natural

    generator = torch.Generator().manual_seed(0)
    images = tuple(torch.rand(3, 90, 120, generator=generator) for _ in range(3))
    monkeypatch.setattr(natural, "load_natural_images", lambda: images)


def tiny_images(size: int, n: int = 8) -> torch.Tensor:
    """``n`` smooth random images (B, 3, size, size), normalised roughly like ImageNet inputs."""
    generator = torch.Generator().manual_seed(123)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (images - 0.45) / 0.25


def tiny_inputs(model) -> torch.Tensor:
    """What the model fits and predicts on: tiny images, or for a video model tiny clips (N, 2, 3, s, s) whose
    second frame is the first one shifted (something moves), each clip its own video."""
    images = tiny_images(model.input_size[0])
    if getattr(model, "input_kind", "image") != "video":
        return images
    frames = images * 0.25 + 0.45  # back to [0, 1]
    return torch.stack([frames, torch.roll(frames, shifts=(3, 5), dims=(2, 3))], dim=1)


def build(name: str, seed: int):
    return create(name, device="cpu", seed=seed, **{"image_size": 64, **TINY[name]})


def run(name: str, seed: int) -> torch.Tensor:
    """create → fit → predict on tiny images; the scores."""
    model = build(name, seed)
    images = tiny_inputs(model)
    options = {"verbose": False} if hasattr(model, "train_config") else {}
    model.fit(images, **options)
    return model.predict(images[:4]).pred_score


def models(slow: set[str] = SLOW):
    """Every registered model; the heavier ones marked slow."""
    return [pytest.param(name, marks=pytest.mark.slow) if name in slow else name for name in available_models()]


def test_every_registered_model_has_a_tiny_configuration():
    assert sorted(TINY) == available_models()


# ---------------------------------------------------------------------------- the helpers
def test_seeded_restores_every_global_generator_and_repeats_inside():
    scramble_globals(5)
    before = global_state()
    with seeded(3):
        inside = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert global_state() == before
    seed_everything(3)  # the reference: the same three draws after a global seed
    assert inside == (random.random(), float(np.random.rand()), float(torch.rand(())))


def test_seeded_restores_the_caller_state_after_an_error():
    scramble_globals(6)
    before = global_state()
    with pytest.raises(RuntimeError, match="boom"), seeded(1):
        torch.rand(10)
        raise RuntimeError("boom")
    assert global_state() == before


def test_random_stream_goes_on_where_it_stopped_and_nests():
    stream = RandomStream(4)
    scramble_globals(7)
    with stream:
        first = torch.rand(3)
        with stream:  # nested: the same block, not restarted
            second = torch.rand(3)
    caller = torch.rand(2)  # the caller's own draw between the blocks: its stream, not the block's
    with stream:
        third = torch.rand(3)
    after = global_state()
    expected = torch.rand(9, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.cat([first, second, third]), expected)
    scramble_globals(7)  # the caller's stream without the blocks: the same draw, the same state after it
    assert torch.equal(torch.rand(2), caller) and global_state() == after
    stream.reset()
    with stream:
        assert torch.equal(torch.rand(3), expected[:3])


def test_explicit_generators_repeat_and_leave_the_global_ones_alone():
    scramble_globals(8)
    before = global_state()
    assert torch.equal(torch.rand(4, generator=torch_generator(2)), torch.rand(4, generator=torch_generator(2)))
    assert np.array_equal(numpy_generator(2).random(4), np.random.default_rng(2).random(4))
    assert global_state() == before


# ---------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name", models())
def test_create_fit_predict_save_load_leave_global_generators_untouched(name, tiny_natural_images, tmp_path):
    scramble_globals(11)
    before = global_state()
    model = build(name, seed=0)
    assert global_state() == before, f"{name}: creating the model changed the global random state"
    images = tiny_inputs(model)
    options = {"verbose": False} if hasattr(model, "train_config") else {}
    model.fit(images, **options)
    assert global_state() == before, f"{name}: fit changed the global random state"
    prediction = model.predict(images[:4])
    assert global_state() == before, f"{name}: predict changed the global random state"
    restored = load(model.save(tmp_path / f"{name}.pt"))
    again = restored.predict(images[:4])
    assert global_state() == before, f"{name}: save/load changed the global random state"
    assert torch.equal(again.pred_score, prediction.pred_score)


@pytest.mark.parametrize("name", models(slow=set(available_models()) - {"padim", "stfpm"}))
def test_same_seed_same_scores_another_seed_other_scores(name, tiny_natural_images):
    """Whatever the caller did to the global generators in between. (Every model draws something from its
    seed: at least the random backbone or network initialisation.)"""
    scramble_globals(1)
    first = run(name, seed=0)
    scramble_globals(2)  # another global state: must not matter
    second = run(name, seed=0)
    other = run(name, seed=1)
    assert torch.equal(first, second), f"{name}: the same seed gave other scores"
    assert not torch.equal(first, other), f"{name}: seeds 0 and 1 gave the same scores"


def test_direct_construction_is_isolated_and_seeded_too():
    """``Padim(...)`` (not through the registry) builds in its own seeded block as well."""
    cls = get_model_class("padim")
    scramble_globals(12)
    before = global_state()
    a = cls(device="cpu", seed=0, **TINY["padim"])
    b = cls(device="cpu", seed=0, **TINY["padim"])
    assert global_state() == before
    assert torch.equal(a.channel_index, b.channel_index)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


class DropoutToy(TrainedModel):
    """A network with default initialisation and dropout: both draw from the global generators."""

    def __init__(self, **options):
        super().__init__(**options)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        self.save_hyperparameters()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)

    def training_step(self, batch, trainer=None):
        return self.net(batch["image"].mean(dim=(2, 3))).pow(2).mean()

    def predict_step(self, images):
        from adlearn.models import Prediction

        return Prediction(self.net(images.mean(dim=(2, 3)))[:, 0])


def test_a_trainer_stepped_by_hand_repeats_and_leaves_global_generators_untouched():
    """Dropout during hand-stepped training draws from the trainer's own stream, started by ``setup``."""
    images = tiny_images(64)

    def losses(seed):
        scramble_globals(13)
        before = global_state()
        model = DropoutToy(image_size=64, device="cpu", seed=seed, batch_size=4)
        trainer = model.trainer(verbose=False, progress=False).setup()
        loader = trainer.make_loader(images)
        values = [trainer.training_step(batch) for batch in loader]
        values.append(trainer.train_one_epoch(loader))
        assert global_state() == before
        return values

    assert losses(0) == losses(0) != losses(1)


def test_a_model_with_dropout_fits_the_same_whatever_the_global_state():
    images = tiny_images(64)
    scores = []
    for seed, scramble in [(0, 1), (0, 2), (1, 1)]:
        scramble_globals(scramble)
        before = global_state()
        model = DropoutToy(image_size=64, device="cpu", seed=seed, batch_size=4, max_epochs=2)
        scores.append(model.fit(images, verbose=False, progress=False).predict(images).pred_score)
        assert global_state() == before
    assert torch.equal(scores[0], scores[1]) and not torch.equal(scores[0], scores[2])


def test_notebooks_may_still_seed_globally():
    """`seed_everything` stays for users: it does seed the global generators."""
    seed_everything(9)
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    seed_everything(9)
    assert a == (random.random(), float(np.random.rand()), float(torch.rand(())))
