"""GANomaly: losses and score against hand computations, the DCGAN shapes, two optimizers stepped in turn,
errors, `adlearn evaluate` on an image-level model, and the real bottle."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from adlearn.models import create
from adlearn.models.ganomaly import (
    DcganDecoder,
    DcganEncoder,
    Discriminator,
    Ganomaly,
    discriminator_loss,
    ganomaly_loss,
    latent_distance,
    to_tanh_range,
)
from adlearn.train import TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

SMALL = dict(image_size=64, n_features=8, latent_size=16, device="cpu", seed=0, batch_size=8)


def test_generator_loss_is_the_weighted_sum_of_the_three_means():
    rng = np.random.default_rng(0)
    x, fake = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    z, z_hat = rng.normal(size=(2, 5, 1, 1)), rng.normal(size=(2, 5, 1, 1))
    f_real, f_fake = rng.normal(size=(2, 6, 4, 4)), rng.normal(size=(2, 6, 4, 4))
    adversarial = ((f_real - f_fake) ** 2).mean()  # Eq. 1, feature matching
    contextual = np.abs(x - fake).mean()  # Eq. 2, L1
    encoder = ((z - z_hat) ** 2).mean()  # Eq. 3, L2
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    losses = ganomaly_loss(t(x), t(fake), t(z), t(z_hat), t(f_real), t(f_fake), w_adv=2.0, w_con=50.0, w_enc=3.0)
    assert float(losses["adversarial"]) == pytest.approx(adversarial)
    assert float(losses["contextual"]) == pytest.approx(contextual)
    assert float(losses["encoder"]) == pytest.approx(encoder)
    assert float(losses["loss"]) == pytest.approx(2 * adversarial + 50 * contextual + 3 * encoder)


def test_discriminator_loss_and_score_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = 0.5 * (
        np.mean([-math.log(sigmoid(2.0)), -math.log(sigmoid(-1.0))])
        + np.mean([-math.log(1 - sigmoid(0.5)), -math.log(1 - sigmoid(-3.0))])
    )
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
    z, z_hat = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])[..., None, None], torch.zeros(2, 3, 1, 1)
    assert latent_distance(z, z_hat).tolist() == pytest.approx([14 / 3, 0.0])


@pytest.mark.parametrize("side, widths", [(8, 4), (16, 8), (64, 32)])
def test_dcgan_shapes(side, widths):
    encoder = DcganEncoder(side, 3, 4, 10)
    decoder = DcganDecoder(side, 3, 4, 10)
    x = torch.randn(2, 3, side, side)
    assert encoder.features(x).shape == (2, widths, 4, 4) and encoder.width == widths
    assert encoder(x).shape == (2, 10, 1, 1)
    out = decoder(torch.randn(2, 10, 1, 1))
    assert out.shape == (2, 3, side, side) and out.abs().max() <= 1.0  # tanh
    logit, features = Discriminator(side, 3, 4)(x)
    assert logit.shape == (2,) and features.shape == (2, widths, 4, 4)


def test_images_reach_the_networks_in_the_tanh_range():
    from adlearn.data.transforms import normalize

    pixels = torch.rand(2, 3, 8, 8)
    assert torch.allclose(to_tanh_range(normalize(pixels)), 2 * pixels - 1, atol=1e-6)


def test_defaults_follow_the_reference_and_bad_options_are_named():
    defaults = {k: p.default for k, p in inspect.signature(Ganomaly.__init__).parameters.items() if k != "self"}
    assert (defaults["n_features"], defaults["latent_size"], defaults["extra_layers"]) == (64, 100, 0)
    assert (defaults["w_adv"], defaults["w_con"], defaults["w_enc"]) == (1.0, 50.0, 1.0)
    assert (defaults["lr"], defaults["betas"], defaults["batch_size"]) == (2e-4, (0.5, 0.999), 32)
    training = TrainingConfig(**Ganomaly.training_defaults)
    assert (training.max_epochs, training.patience) == (100, 3)
    assert Ganomaly.task == "classification" and not Ganomaly.automatic_optimization
    with pytest.raises(ValueError, match="power of two >= 8, got 100x100.*image_size=64"):
        create("ganomaly", image_size=100, device="cpu")
    with pytest.raises(ValueError, match="power of two"):
        create("ganomaly", image_size=(64, 32), device="cpu")
    with pytest.raises(ValueError, match="adversarial must be one of"):
        create("ganomaly", adversarial="wasserstein", **SMALL)
    with pytest.raises(ValueError, match="latent_size must be a positive integer"):
        create("ganomaly", **{**SMALL, "latent_size": 0})
    with pytest.raises(TypeError, match="unknown option 'epochs'"):
        create("ganomaly", epochs=3, **SMALL)


def test_dcgan_initialisation():
    model = create("ganomaly", **{**SMALL, "n_features": 32, "latent_size": 100})
    conv = model.generator.encoder.features[0].weight.detach()
    assert abs(float(conv.mean())) < 0.005 and float(conv.std()) == pytest.approx(0.02, rel=0.1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    scales = torch.cat([m.weight.detach() for m in norms])
    assert float(scales.mean()) == pytest.approx(1.0, abs=0.01) and all(
        float(m.bias.detach().abs().max()) == 0 for m in norms
    )


def test_each_batch_steps_the_generator_then_the_discriminator(datasets_64):
    """Both networks learn; the discriminator's step never adds gradient to the generator (x̂ detached)."""
    model = create("ganomaly", max_epochs=1, **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    trainer = model.trainer(verbose=False)
    steps, generator_grads = [], []
    original = trainer.optimizer_step

    def spy(loss, name=None):
        original(loss, name)
        steps.append(name)
        if name == "generator":
            generator_grads.append([p.grad.clone() for p in model.generator.parameters()])
        else:  # after the discriminator's step the generator's gradients are still the generator loss's own
            for grad, p in zip(generator_grads[-1], model.generator.parameters()):
                assert torch.equal(grad, p.grad)

    trainer.optimizer_step = spy
    trainer.fit(datasets_64[0])
    batches = math.ceil(len(datasets_64[0]) / SMALL["batch_size"])
    assert steps == ["generator", "discriminator"] * batches
    for prefix in ("generator.encoder.", "generator.decoder.", "generator.encoder_2.", "discriminator."):
        changed = [
            k
            for k, v in model.state_dict().items()
            if k.startswith(prefix) and k.endswith("weight") and not torch.equal(v, before[k])
        ]
        assert changed, prefix
    assert set(trainer.history.losses) == {"generator", "discriminator"}


def test_training_reduces_the_reconstruction_error(datasets_64):
    train = torch.stack([datasets_64[0][i]["image"] for i in range(len(datasets_64[0]))])
    # 12 steps: a larger step size than the paper's, and batch-norm statistics re-estimated at the end (with
    # the running averages of 12 batches the eval-mode error barely moves: 0.227 -> 0.226, re-estimated 0.210)
    model = create("ganomaly", max_epochs=6, lr=2e-3, precise_bn=True, **SMALL)

    def contextual():
        model.eval()
        with torch.no_grad():
            return float(model.losses(train)[0]["contextual"])

    start = contextual()
    model.fit(train, verbose=False)
    assert contextual() < 0.85 * start  # measured 0.227 -> 0.170
    assert len(model.history.loss) == 6


def test_anomalib_adversarial_variant_and_validation_losses(datasets_64):
    model = create("ganomaly", adversarial="probability", max_epochs=2, val_fraction=0.25, val_metric="loss", **SMALL)
    model.fit(datasets_64[0], verbose=False)
    assert model.history.val_metric == "loss" and len(model.history.val) == 2
    assert all(np.isfinite(model.history.val))


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_cpu_preset(bottle_fit):
    # docs/log/2026-12-06-benchmarks-history.md: the cpu preset (64 px, n_features 32, 15 epochs) scored image AUROC 0.640, 0.883
    # and 0.889 on the bottle test set with seeds 0, 1, 2 (about 100 CPU seconds each). A GAN's result moves
    # with the rounding of another CPU as much as with the seed, so the bound is only "better than chance".
    results = bottle_fit("ganomaly", n_train=None, seed=1)
    assert results["pixel_auroc"] is None and results["task"] == "classification"
    assert results["image_auroc"] > 0.5, results
