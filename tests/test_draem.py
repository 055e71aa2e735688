"""DRÆM and its components: SSIM against scikit-image, the focal loss by hand, the U-Net and SSPCAB, the
anomaly simulation in [0, 1] space, training and errors. (Save/load, seeding and input errors:
tests/test_model_contract.py.)"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from adlearn.components import SSPCAB, UNet, focal_loss, ssim, ssim_map
from adlearn.data import DataError
from adlearn.models import create
from adlearn.models.draem import Draem, ReconstructiveSubNetwork, draem_anomaly_map, draem_loss, to_unit_range
from adlearn.train import TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

SMALL = dict(image_size=64, reconstruction_width=8, discrimination_width=4, device="cpu", seed=0, batch_size=4)


# ----------------------------------------------------------------------------- components
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_matches_scikit_image(data_range):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 40, 36)) * data_range
    y = np.clip(x + rng.normal(scale=0.1 * data_range, size=x.shape), 0, data_range)
    ours = ssim(torch.tensor(x), torch.tensor(y), data_range=data_range, padding="valid")
    reference = np.mean(
        [
            structural_similarity(
                x[b],
                y[b],
                channel_axis=0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=data_range,
            )
            for b in range(2)
        ]
    )
    assert float(ours) == pytest.approx(reference, abs=1e-6)
    same = torch.tensor(x)
    assert float(ssim(same, same, data_range=data_range)) == pytest.approx(1.0, abs=1e-9)
    assert ssim_map(same, same).shape == same.shape  # "reflect" keeps the size


def test_focal_loss_by_hand():
    logits = torch.tensor([[[[2.0]], [[0.0]]], [[[0.5]], [[1.5]]]])  # (2, 2, 1, 1)
    target = torch.tensor([[[[1.0]]], [[[1.0]]]])  # both pixels anomalous
    expected = []
    for z0, z1 in ((2.0, 0.0), (0.5, 1.5)):
        p = math.exp(z1) / (math.exp(z0) + math.exp(z1))
        expected.append(-((1 - p) ** 2) * math.log(p))
    assert float(focal_loss(logits, target)) == pytest.approx(np.mean(expected), rel=1e-6)
    # gamma = 0 is the cross-entropy
    assert float(focal_loss(logits, target, gamma=0.0)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target[:, 0].long())), rel=1e-6
    )


def test_unet_shapes_skips_and_size_error():
    unet = UNet(6, 2, (4, 8, 16, 32, 32, 32))
    assert unet(torch.randn(1, 6, 64, 64)).shape == (1, 2, 64, 64)
    # decoder levels output the width of the encoder level above: 32, 16, 8, 4, 4
    assert [block[1][0].out_channels for block in unet.decoder] == [32, 16, 8, 4, 4]
    with pytest.raises(ValueError, match="divisible by 32"):
        unet(torch.randn(1, 6, 48, 48))


def test_sspcab_never_sees_the_centre():
    block = SSPCAB(16)
    x = torch.randn(2, 16, 9, 9)
    y = x.clone()
    y[:, :, 4, 4] += 5.0
    assert torch.equal(block.masked_convolution(x)[:, :, 4, 4], block.masked_convolution(y)[:, :, 4, 4])
    assert not torch.equal(block.masked_convolution(x)[:, :, 2, 2], block.masked_convolution(y)[:, :, 2, 2])
    assert block(x).shape == x.shape


def test_reconstructive_network_shapes():
    network = ReconstructiveSubNetwork(4)
    before, after = network.encode(torch.randn(2, 3, 32, 32))
    assert before.shape == after.shape == (2, 32, 2, 2)
    assert network(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- the model's steps
def test_loss_and_map_formulas():
    rng = torch.Generator().manual_seed(0)
    original, reconstruction = torch.rand(2, 3, 32, 32, generator=rng), torch.rand(2, 3, 32, 32, generator=rng)
    mask = (torch.rand(2, 1, 32, 32, generator=rng) > 0.7).float()
    logits = torch.randn(2, 2, 32, 32, generator=rng)
    losses = draem_loss(original, reconstruction, mask, logits)
    assert float(losses["l2"]) == pytest.approx(float(((original - reconstruction) ** 2).mean()))
    assert float(losses["ssim"]) == pytest.approx(1 - float(ssim(reconstruction, original)))
    assert float(losses["loss"]) == pytest.approx(float(losses["l2"] + losses["ssim"] + focal_loss(logits, mask)))
    probability = draem_anomaly_map(logits)
    assert torch.allclose(probability, 1 / (1 + torch.exp(logits[:, 0] - logits[:, 1])), atol=1e-6)


def test_anomalies_are_simulated_in_unit_space():
    model = create("draem", **SMALL)
    model.augmenter.p_anomalous = 1.0
    from adlearn.data.transforms import normalize

    pixels = torch.rand(3, 3, 64, 64)
    original, augmented, mask = model.simulate(normalize(pixels))
    assert torch.allclose(original, pixels, atol=1e-6)
    assert augmented.min() >= 0 and augmented.max() <= 1 and mask.sum() > 0
    outside = mask.expand_as(pixels) == 0
    assert torch.allclose(augmented[outside], pixels[outside], atol=1e-6)  # nothing changes outside the mask
    assert torch.allclose(to_unit_range(normalize(pixels)), pixels, atol=1e-6)


def test_defaults_follow_the_reference_and_bad_options_are_named(tmp_path):
    defaults = {k: p.default for k, p in inspect.signature(Draem.__init__).parameters.items() if k != "self"}
    assert (defaults["reconstruction_width"], defaults["discrimination_width"]) == (128, 64)
    assert (defaults["sspcab"], defaults["sspcab_lambda"], defaults["beta"]) == (False, 0.1, (0.1, 1.0))
    assert (defaults["lr"], defaults["batch_size"], defaults["anomaly_source"]) == (1e-4, 8, None)
    training = TrainingConfig(**Draem.training_defaults)
    assert (training.max_epochs, training.patience) == (700, 20)
    optimizer, scheduler = create("draem", **SMALL).configure_optimizers()
    assert sorted(scheduler.milestones) == [400, 600]  # the reference's, at 700 epochs
    # The fused Adam makes the same update as the default one, up to rounding.
    assert optimizer.defaults["fused"] and optimizer.defaults["lr"] == 1e-4
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [w.detach().clone().requires_grad_() for w in weights]
    for params, fused in ((weights, True), (twins, False)):
        adam = torch.optim.Adam(params, lr=1e-2, fused=fused)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.5 + step) * torch.arange(p.numel()).view_as(p)
            adam.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights, twins))
    with pytest.raises(ValueError, match="divisible by 32, got 48x48.*image_size=256"):
        create("draem", **{**SMALL, "image_size": 48})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        create("draem", anomaly_source=str(tmp_path / "empty"), **SMALL)
    with pytest.raises(DataError, match="not a folder"):
        create("draem", anomaly_source=str(tmp_path / "missing"), **SMALL)


def test_skimage_textures_are_offline_images():
    model = create("draem", anomaly_source="skimage", **SMALL)
    names = {path.stem for path in model.augmenter.texture_paths}
    assert {"brick", "grass", "gravel"} <= names and len(names) >= 10
    texture = model.augmenter.generate_texture(32, 32)
    assert texture.shape == (3, 32, 32) and 0 <= float(texture.min()) and float(texture.max()) <= 1


def test_training_learns_to_segment_the_simulated_anomalies(datasets_64):
    train = torch.stack([datasets_64[0][i]["image"] for i in range(len(datasets_64[0]))])
    model = create("draem", max_epochs=8, lr=2e-3, **SMALL)
    model.fit(train, verbose=False)
    focal = model.history.losses["focal"]
    assert focal[-1] < 0.5 * focal[0], focal
    assert set(model.history.losses) == {"l2", "ssim", "focal", "loss"}


def test_sspcab_trains_and_the_score_is_the_maps_maximum(datasets_64):
    train, test = datasets_64
    images = torch.stack([test[i]["image"] for i in range(4)])
    model = create("draem", max_epochs=1, sspcab=True, **SMALL).fit(train, verbose=False)
    prediction = model.predict(images)
    assert prediction.anomaly_map.shape == (4, 64, 64) and "sspcab" in model.history.losses
    assert torch.equal(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


def test_adlearn_evaluate_names_a_bad_image_size():
    from adlearn.cli import main

    assert main(["evaluate", "draem", "--image-size", "48", "--device", "cpu"]) == 2  # a clear error, no traceback
