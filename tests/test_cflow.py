"""C-Flow: fibers and codes, the likelihood against autograd, scores independent of the batch, training with
many steps per batch, the best checkpoint, CLI, and the real bottle (slow). (Save/load, seeding and input
errors: tests/test_model_contract.py.)"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from adlearn.components.positional_encoding import positional_encoding_2d
from adlearn.models import create, load
from adlearn.models.cflow import Cflow, build_decoder, cflow_anomaly_map, cflow_loss, fiber_log_likelihood, to_fibers
from adlearn.train import TrainingConfig

BACKBONE = "efficientnet_lite0"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_defaults_follow_the_reference():
    defaults = {k: p.default for k, p in inspect.signature(Cflow.__init__).parameters.items() if k != "self"}
    training = TrainingConfig(**Cflow.training_defaults).to_dict()
    assert (
        defaults["backbone"],
        defaults["layers"],
        defaults["fiber_batch_size"],
        defaults["condition_vector"],
        defaults["coupling_blocks"],
        defaults["clamp_alpha"],
        defaults["permute_soft"],
        defaults["lr"],
    ) == ("wide_resnet50_2", ("layer2", "layer3", "layer4"), 64, 128, 8, 1.9, False, 1e-4)
    assert (training["max_epochs"], training["patience"]) == (50, 2) and not Cflow.automatic_optimization


def test_fibers_and_their_codes():
    feature = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)  # (B, C, h, w)
    fibers, codes = to_fibers(feature, 8)
    assert fibers.shape == (16, 3) and codes.shape == (16, 8)
    code = positional_encoding_2d(8, 2, 4)
    for b, y, x in [(0, 0, 0), (1, 1, 3), (0, 1, 2)]:
        row = b * 8 + y * 4 + x
        assert torch.equal(fibers[row], feature[b, :, y, x]) and torch.equal(codes[row], code[:, y, x])


def test_log_likelihood_is_the_change_of_variables_with_an_autograd_jacobian():
    torch.manual_seed(0)
    decoder = build_decoder(4, 8, coupling_blocks=3, clamp_alpha=1.9, permute_soft=False).double()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    fibers, codes = to_fibers(torch.randn(1, 4, 2, 2, dtype=torch.float64), 8)
    log_p = fiber_log_likelihood(decoder, fibers, codes)
    for i in range(4):
        z_of = lambda u: decoder(u[None], c=[codes[i : i + 1]])[0][0]  # noqa: E731, B023
        jacobian = torch.autograd.functional.jacobian(z_of, fibers[i])
        z = z_of(fibers[i])
        gaussian = -0.5 * 4 * math.log(2 * math.pi) - 0.5 * float(z.pow(2).sum().detach())
        expected = (gaussian + float(torch.linalg.slogdet(jacobian).logabsdet.detach())) / 4
        assert float(log_p[i].detach()) == pytest.approx(expected, abs=1e-10)
    assert float(cflow_loss(log_p)) == pytest.approx(float(torch.log1p(torch.exp(-log_p)).mean()))


def test_anomaly_map_formula():
    log_ps = [torch.tensor([[[-1.0, -2.0], [-3.0, -1.5]]]), torch.tensor([[[-0.5]]])]
    maxima = torch.tensor([-1.0, -0.25])
    anomaly_map = cflow_anomaly_map(log_ps, maxima, (4, 4))
    expected = (
        1 - F.interpolate(torch.exp(log_ps[0] + 1.0)[:, None], size=(4, 4), mode="bilinear", align_corners=True)[:, 0]
    ) + (1 - math.exp(-0.25))
    torch.testing.assert_close(anomaly_map, expected)
    assert float(anomaly_map[0, 0, 0]) == pytest.approx(1 - math.exp(-0.25))  # p̃ = 1 at the maximum


@pytest.fixture(scope="module")
def trained(datasets_64, tmp_path_factory):
    model = create(
        "cflow",
        backbone=BACKBONE,
        image_size=64,
        coupling_blocks=2,
        fiber_batch_size=64,
        max_epochs=2,
        batch_size=6,
        device="cpu",
        seed=0,
    )
    checkpoint = tmp_path_factory.mktemp("cflow") / "best.pt"
    model.fit(datasets_64[0], val_data=datasets_64[1], checkpoint_path=checkpoint, verbose=False)
    return model, checkpoint


def test_architecture_and_many_steps_per_batch(trained):
    model = trained[0]
    # efficientnet_lite0 stages of stride 8/16/32 at 64 px: 40×8×8, 112×4×4, 320×2×2
    assert model.feature_shapes == [(40, 8, 8), (112, 4, 4), (320, 2, 2)]
    assert model.decoders[0][0].subnet[0].in_features == 20 + 128 and model.decoders[0][0].subnet[0].out_features == 296
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"decoders"}
    assert model.history.steps == 4  # image batches: 2 epochs of 2
    assert model.history.loss[-1] < model.history.loss[0]


def test_one_optimizer_step_per_chunk_of_fibers(datasets_64):
    model = create(
        "cflow",
        backbone=BACKBONE,
        image_size=64,
        coupling_blocks=1,
        fiber_batch_size=64,
        max_steps=1,
        batch_size=6,
        device="cpu",
        seed=0,
    )
    trainer = model.trainer(verbose=False)
    calls, step = [], trainer.optimizer_step
    trainer.optimizer_step = lambda loss, name=None: (calls.append(float(loss.detach())), step(loss, name))
    trainer.fit(datasets_64[0])
    # one batch of 6 images: 6·64 = 384, 6·16 = 96 and 6·4 = 24 fibers -> 6 + 2 + 1 chunks of <= 64 (none dropped)
    assert len(calls) == 9 and trainer.history.steps == 1


def test_score_does_not_depend_on_the_batch(trained, datasets_64):
    model = trained[0]
    images = torch.stack([datasets_64[1][i]["image"] for i in range(5)])
    together = model.predict(images)
    for i in range(5):
        alone = model.predict(images[i : i + 1])  # batch size 1 works and agrees
        torch.testing.assert_close(alone.anomaly_map[0], together.anomaly_map[i], atol=1e-5, rtol=1e-5)
    mixed = model.predict(torch.cat([images[:2], torch.zeros(3, 3, 64, 64)]))
    torch.testing.assert_close(mixed.pred_score[:2], together.pred_score[:2], atol=1e-5, rtol=1e-5)
    assert together.anomaly_map.shape == (5, 64, 64) and together.anomaly_map.isfinite().all()
    assert torch.allclose(together.pred_score, together.anomaly_map.flatten(1).amax(1))


def test_log_likelihood_maximum_is_that_of_the_training_images(trained, datasets_64):
    model = trained[0]
    images = torch.stack([datasets_64[0][i]["image"] for i in range(len(datasets_64[0]))])
    with torch.no_grad():
        model.eval()
        maxima = [float(log_p.max()) for log_p in model.layer_log_likelihoods(images)]
    assert model.log_likelihood_max.tolist() == pytest.approx(maxima, abs=1e-5)


def test_best_checkpoint_loads(trained):
    assert load(trained[1]).history.steps >= 2


def test_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        create("cflow", backbone=BACKBONE, pretrained="none", image_size=64, condition_vector=10, device="cpu")
    with pytest.raises(ValueError, match="fiber_batch_size"):
        create("cflow", backbone=BACKBONE, pretrained="none", image_size=64, fiber_batch_size=0, device="cpu")


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_short_fit(bottle_fit):
    # The CI check (~60 CPU s): the cpu preset for one epoch on 60 evenly spaced training images. Measured
    # (seed 0, one thread): image AUROC 0.995, pixel AUROC 0.876; the bounds leave room for another CPU's rounding.
    results = bottle_fit("cflow", max_epochs=1)
    assert results["image_auroc"] >= 0.97 and results["pixel_auroc"] >= 0.83, results


@pytest.mark.slow
@pytest.mark.mvtec
@pytest.mark.recipe  # ~180 CPU s: make test-recipes
def test_real_bottle_after_one_epoch(bottle_fit):
    # docs/log/2026-12-06-benchmarks-history.md: the cpu preset (offline efficientnet_lite2, strides 8/16/32) stopped after one epoch
    # (about 3,500 optimizer steps) gave image AUROC 0.996 and pixel AUROC 0.916 (seed 0). The targets
    # (0.99 / 0.96) need the preset's full training, not measured yet.
    results = bottle_fit("cflow", n_train=None, max_epochs=1)
    assert results["image_auroc"] >= 0.98 and results["pixel_auroc"] >= 0.90, results
