"""The loop is ready for every model: several optimizers stepped by hand, training phases, hooks,
validation that changes nothing, one checked TrainingConfig, presets and corrupt checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adlearn
from adlearn.models import TrainedModel
from adlearn.models.common import prediction_from_map
from adlearn.train import Phase, Trainer, TrainingConfig

SIZE = 8
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normal_images(n: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 1.0 + 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=generator)


# ---------------------------------------------------------------------------- two optimizers
class ToyGan(TrainedModel):
    """Generator (noise -> image) against a discriminator (image -> logit), stepped alternately."""

    name = "toy_gan"
    automatic_optimization = False
    training_defaults = {"max_epochs": 3}

    def __init__(self, **options):
        super().__init__(image_size=SIZE, device="cpu", seed=0, batch_size=4, **options)
        self.save_hyperparameters()
        self.generator = nn.Sequential(nn.Linear(4, 3 * SIZE * SIZE), nn.Unflatten(1, (3, SIZE, SIZE)))
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 1))
        self.calls: list[str] = []

    def configure_optimizers(self):
        discriminator = torch.optim.SGD(self.discriminator.parameters(), lr=1e-2)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=1e-3),
            "discriminator": (discriminator, torch.optim.lr_scheduler.StepLR(discriminator, 1, gamma=0.5)),
        }

    def losses(self, images):
        fake = self.generator(torch.randn(len(images), 4))
        real_logit, fake_logit = self.discriminator(images), self.discriminator(fake.detach())
        bce = nn.functional.binary_cross_entropy_with_logits
        d_loss = bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
        g_logit = self.discriminator(fake)
        return bce(g_logit, torch.ones_like(g_logit)), d_loss

    def training_step(self, batch, trainer):
        g_loss, d_loss = self.losses(batch["image"])
        trainer.optimizer_step(d_loss, "discriminator")
        self.calls.append("discriminator")
        g_loss, _ = self.losses(batch["image"])  # with the discriminator just updated
        trainer.optimizer_step(g_loss, "generator")
        self.calls.append("generator")
        return {"generator": g_loss, "discriminator": d_loss}

    def validation_step(self, batch):
        g_loss, d_loss = self.losses(batch["image"])
        return {"generator": g_loss, "discriminator": d_loss}

    def predict_step(self, images):
        return prediction_from_map(-self.discriminator(images)[:, :, None].expand(-1, SIZE, SIZE))


@pytest.mark.parametrize("amp", [False, "bf16"])
def test_two_optimizers_step_alternately_and_both_losses_are_recorded(amp):
    model = ToyGan(amp=amp)
    before = copy.deepcopy(model.state_dict())
    model.fit(normal_images(), verbose=False)
    history = model.history
    assert set(history.losses) == {"generator", "discriminator"}
    assert len(history.losses["generator"]) == len(history.losses["discriminator"]) == 3
    assert history.loss == pytest.approx(
        [g + d for g, d in zip(history.losses["generator"], history.losses["discriminator"])]
    )
    assert model.calls == ["discriminator", "generator"] * 9  # 3 epochs x 3 batches, alternating
    assert history.lr == [1e-3] * 3  # the first optimizer's (generator) rate
    for name, value in model.state_dict().items():  # both networks learned
        if name.startswith(("generator", "discriminator")):
            assert not torch.equal(value, before[name]), name


def test_several_optimizers_need_manual_optimization():
    class Automatic(ToyGan):
        automatic_optimization = True

    with pytest.raises(ValueError, match="automatic_optimization = False"):
        Automatic().fit(normal_images(), verbose=False)


def test_a_manual_model_must_say_how_to_validate():
    class NoValidation(ToyGan):
        validation_step = TrainedModel.validation_step

    with pytest.raises(NotImplementedError, match="define validation_step"):
        NoValidation(val_fraction=0.25, val_metric="loss").fit(normal_images(), verbose=False)


def test_the_optimizer_must_be_named_when_there_are_several():
    model = ToyGan()
    trainer = model.trainer(verbose=False).setup()
    with pytest.raises(ValueError, match="name the one to step"):
        trainer.optimizer_step(model.losses(normal_images(4))[0])
    with pytest.raises(KeyError, match="no optimizer named 'critic'"):
        trainer.optimizer_step(model.losses(normal_images(4))[0], "critic")


# ---------------------------------------------------------------------------- phases
class ThreePhases(TrainedModel):
    """Three linear maps in a row; phase k trains only map k."""

    name = "three_phases"
    training_defaults = {"max_epochs": 1}

    def __init__(self, **options):
        super().__init__(image_size=SIZE, device="cpu", seed=0, batch_size=4, **options)
        self.parts = nn.ModuleList([nn.Conv2d(3, 3, 1) for _ in range(3)])
        self.norm = nn.BatchNorm2d(3)  # belongs to the second phase
        self.seen: list[tuple[str, int]] = []

    def training_phases(self):
        def adam(module):
            return lambda: torch.optim.Adam(module.parameters(), lr=0.05)

        second = nn.ModuleList([self.parts[1], self.norm])
        return [
            Phase("first", adam(self.parts[0]), [self.parts[0]], max_epochs=2),
            Phase("second", adam(second), [second], max_epochs=1),
            Phase("third", adam(self.parts[2]), [self.parts[2]], max_steps=2),
        ]

    def forward(self, images):
        return self.parts[2](self.norm(self.parts[1](self.parts[0](images))))

    def on_epoch_start(self, trainer):
        self.seen.append((trainer.phase.name, trainer.epoch))

    def training_step(self, batch, trainer=None):
        return (self(batch["image"]) - 2.0).pow(2).mean()

    def predict_step(self, images):
        return prediction_from_map((self(images) - 2.0).pow(2).mean(1))


def test_each_phase_changes_only_its_own_parameters():
    model = ThreePhases()
    states = []

    def keep(trainer, record):
        states.append((record["phase"], copy.deepcopy(model.state_dict())))

    start = copy.deepcopy(model.state_dict())
    model.fit(normal_images(), callbacks=[keep], verbose=False)
    owner = {"first": ("parts.0.",), "second": ("parts.1.", "norm."), "third": ("parts.2.",)}
    previous = start
    for phase, state in states:
        for name, value in state.items():
            if name.startswith("_") or name.endswith("_extra_state"):
                continue
            changed = not torch.equal(value, previous[name])
            assert changed == name.startswith(owner[phase]), (phase, name)
        previous = state
    assert [phase for phase, _ in states] == ["first", "first", "second", "third"]
    assert model.history.phase == ["first", "first", "second", "third"]
    assert model.history.steps == 3 + 3 + 3 + 2  # 12 images, batches of 4
    assert model.seen == [("first", 1), ("first", 2), ("second", 3), ("third", 4)]
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_hooks_run_in_order():
    events = []

    class Hooked(ThreePhases):
        def on_fit_start(self, data, trainer):
            events.append(("fit_start", len(data), trainer.global_step))

        def on_fit_end(self, data, trainer):
            events.append(("fit_end", len(data), trainer.global_step))

    Hooked().fit(normal_images(), verbose=False)
    assert events == [("fit_start", 12, 0), ("fit_end", 12, 11)]


# ---------------------------------------------------------------------------- validation changes nothing
def optimizer_state(trainer):
    return {name: copy.deepcopy(optimizer.state_dict()) for name, (optimizer, _) in trainer.optimizers.items()}


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("make, metric", [(ThreePhases, "loss"), (ToyGan, "loss"), (ToyGan, "image_auroc")])
def test_validation_leaves_every_parameter_buffer_and_optimizer_state_untouched(make, metric):
    model = make()
    trainer = model.trainer(verbose=False, val_metric=metric)
    trainer.setup()
    loader = trainer.make_loader(normal_images())
    trainer.train_one_epoch(loader)  # optimizers now have state (Adam moments...)
    model.mark_fitted()
    weights, optimizers = copy.deepcopy(model.state_dict()), optimizer_state(trainer)
    validation = [{"image": image, "label": int(i % 2)} for i, image in enumerate(normal_images(6, seed=3))]
    value = trainer.validate(validation)
    assert value == value  # a number, not NaN
    assert_same(model.state_dict(), weights)
    assert_same(optimizer_state(trainer), optimizers)


# ---------------------------------------------------------------------------- one configuration
def test_training_config_is_checked_once_with_clear_errors():
    assert TrainingConfig(max_epochs=3).replace(patience=2).patience == 2
    for options, message in [
        ({"max_epochs": 0}, "max_epochs=0"),
        ({"max_epochs": 2, "patience": -1}, "patience=-1"),
        ({"max_epochs": 2, "val_fraction": 1.5}, r"val_fraction=1.5: must be in \[0, 1\)"),
        ({"max_epochs": 2, "val_metric": "f1"}, "val_metric='f1'"),
        ({"max_epochs": 2, "amp": "fp8"}, "amp='fp8'"),
        ({}, "give max_epochs or max_steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainingConfig(**options)
    with pytest.raises(ValueError, match="unknown training option 'max_epoch'"):
        TrainingConfig(max_epochs=3).replace(max_epoch=4)


def test_trained_models_take_training_options_from_the_config_only():
    model = adlearn.create(
        "stfpm", backbone="efficientnet_lite0", pretrained="none", max_epochs=7, image_size=64, device="cpu"
    )
    assert model.train_config.max_epochs == model.max_epochs == 7
    assert model.train_config.precise_bn and model.patience == 5  # STFPM's paper defaults
    assert Trainer(model, model.train_config).config.max_epochs == 7
    with pytest.raises(TypeError, match="unknown option 'max_epoch'.*Training options: max_epochs"):
        adlearn.create("stfpm", backbone="efficientnet_lite0", pretrained="none", max_epoch=7, device="cpu")
    with pytest.raises(ValueError, match="patience=0"):
        adlearn.create("stfpm", backbone="efficientnet_lite0", pretrained="none", patience=0, device="cpu")


def test_model_files_declare_no_training_options():
    import inspect

    from adlearn.models import available_models, get_model_class

    for name in available_models():
        model_class = get_model_class(name)
        if issubclass(model_class, TrainedModel):
            declared = set(inspect.signature(model_class.__init__).parameters)
            assert not declared & set(TrainingConfig.keys()), (name, declared & set(TrainingConfig.keys()))


# ---------------------------------------------------------------------------- presets
def test_every_model_has_a_cpu_preset_and_explicit_options_win():
    from adlearn.models import available_models, get_model_class

    for name in available_models():
        model_class = get_model_class(name)
        assert "cpu" in model_class.presets, name
        assert model_class.preset("paper") == model_class.presets.get("paper", {})
    model = adlearn.create("stfpm", preset="cpu", pretrained="none", device="cpu", max_epochs=2, image_size=64)
    assert model.config["backbone"] == "efficientnet_lite0" and model.max_epochs == 2 and model.val_fraction == 0.2
    with pytest.raises(ValueError, match="no preset 'gpu'; presets: cpu, paper"):
        adlearn.create("stfpm", preset="gpu")


def test_saved_preset_model_loads_back_identically(tmp_path):
    model = adlearn.create(
        "stfpm",
        preset="cpu",
        pretrained="none",
        device="cpu",
        max_epochs=1,
        image_size=64,
        val_fraction=0.0,
        batch_size=4,
    )
    model.fit(normal_images(8).repeat_interleave(8, -1).repeat_interleave(8, -2), verbose=False)
    images = normal_images(2, seed=5).repeat_interleave(8, -1).repeat_interleave(8, -2)
    loaded = adlearn.load(model.save(tmp_path / "stfpm.pt"))
    assert loaded.train_config == model.train_config
    assert torch.equal(loaded.predict(images).anomaly_map, model.predict(images).anomaly_map)


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_checkpoint_is_a_clear_error_naming_the_file(tmp_path, damage):
    model = ThreePhases()
    path = tmp_path / "model.pt"
    from adlearn.models.base import AnomalyModel

    AnomalyModel.save(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(
        ValueError, match=rf"{path.name} could not be read as an adlearn checkpoint.*corrupt or truncated"
    ):
        adlearn.load(path)


# ---------------------------------------------------------------------------- a phase's own step
class TwoSteps(TrainedModel):
    """Two phases, each with its own training step (no ``training_step`` at all), counted per phase."""

    name = "two_steps"
    training_defaults = {"max_epochs": 1}

    def __init__(self, **options):
        super().__init__(image_size=SIZE, device="cpu", seed=0, batch_size=4, **options)
        self.first, self.second = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.calls: list[tuple[str, bool]] = []  # (step, given a trainer)

    def training_phases(self):
        return [
            Phase("a", lambda: torch.optim.SGD(self.first.parameters(), lr=0.1), [self.first], 2, step=self.step_a),
            Phase("b", lambda: torch.optim.SGD(self.second.parameters(), lr=0.1), [self.second], 1, step=self.step_b),
        ]

    def step_a(self, batch, trainer):
        self.calls.append(("a", trainer is not None))
        return (self.first(batch["image"]) - 2.0).pow(2).mean()

    def step_b(self, batch, trainer):
        self.calls.append(("b", trainer is not None))
        return (self.second(batch["image"]) + 1.0).pow(2).mean()

    def predict_step(self, images):
        return prediction_from_map(self.second(self.first(images)).pow(2).mean(1))


def test_each_phase_runs_its_own_step_for_training_and_validation():
    model = TwoSteps()
    before = copy.deepcopy(model.state_dict())
    model.fit(normal_images(12), val_data=normal_images(4, seed=1), val_metric="loss", verbose=False)
    # 12 images in batches of 4: 3 steps an epoch; validation (4 images, 1 batch) after each epoch, with no trainer
    assert model.calls == [("a", True)] * 3 + [("a", False)] + [("a", True)] * 3 + [("a", False)] + [
        ("b", True)
    ] * 3 + [("b", False)]
    assert model.history.phase == ["a", "a", "b"]
    changed = {
        name.split(".")[0]
        for name, value in model.state_dict().items()
        if "extra_state" not in name and not name.startswith("_") and not torch.equal(value, before[name])
    }
    assert changed == {"first", "second"}
    # the validation loss is the phase's own objective, computed by hand on the held-out images
    images = normal_images(4, seed=1)
    with torch.no_grad():
        expected = float((model.second(images) + 1.0).pow(2).mean())
    assert model.history.val[-1] == pytest.approx(expected, rel=1e-6)


def test_auto_validation_on_unlabelled_images_falls_back_to_the_loss():
    # a plain (N, 3, H, W) tensor has no labels: "auto" validates on the loss, as TrainingConfig documents
    model = ToyGan(max_epochs=2, val_fraction=0.25)
    model.fit(normal_images(), verbose=False)
    assert model.history.val_metric == "loss"
    assert len(model.history.val) == 2 and all(value is not None for value in model.history.val)
    with pytest.raises(ValueError, match="needs labelled validation data"):  # an explicit AUROC still refuses
        ToyGan(max_epochs=1, val_fraction=0.25, val_metric="image_auroc").fit(normal_images(), verbose=False)


def test_max_steps_caps_every_phase_of_a_phased_model():
    # the run's max_steps is never dropped for a model with its own phases: each phase still runs, for at
    # most that many batches (12 images in batches of 4: 3 an epoch, so phase a would take 6, phase b 3)
    model = TwoSteps(max_steps=2)
    model.fit(normal_images(12), verbose=False)
    assert model.calls == [("a", True)] * 2 + [("b", True)] * 2
    assert model.history.phase == ["a", "b"] and model.history.steps == 4
    longer = TwoSteps(max_steps=100)  # a cap above a phase's own length changes nothing
    longer.fit(normal_images(12), verbose=False)
    assert longer.calls == [("a", True)] * 6 + [("b", True)] * 3
