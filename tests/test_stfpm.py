"""STFPM: the loss and the anomaly map against hand computations; training, the CLI.
(Save/load, seeding and input errors: tests/test_model_contract.py.)"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adlearn.models import create
from adlearn.models.stfpm import Stfpm, normalized_difference, stfpm_anomaly_map, stfpm_loss
from adlearn.train import TrainingConfig

BACKBONE = "efficientnet_lite0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _hand_unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.sqrt((vector**2).sum())


def test_loss_equals_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 4, 3, 3), (2, 5, 2, 1)]
    teachers = [torch.randn(s, generator=generator) for s in shapes]
    students = [torch.randn(s, generator=generator) for s in shapes]
    expected = 0.0
    for t, s in zip(teachers, students):  # Σ_l 1/(2 h w) Σ_{b,i,j} ‖t̂ − ŝ‖²
        batch, _, height, width = t.shape
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    difference = _hand_unit(t[b, :, i, j].numpy()) - _hand_unit(s[b, :, i, j].numpy())
                    expected += (difference**2).sum() / (2 * height * width)
    assert float(stfpm_loss(teachers, students)) == pytest.approx(expected, rel=1e-5)
    assert float(stfpm_loss(teachers, teachers)) == pytest.approx(0.0, abs=1e-6)


def test_anomaly_map_is_the_product_of_upsampled_cosine_distances():
    generator = torch.Generator().manual_seed(1)
    teachers = [torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 6, 2, 2, generator=generator)]
    students = [torch.randn(2, 4, 4, 4, generator=generator), torch.randn(2, 6, 2, 2, generator=generator)]
    expected = torch.ones(2, 1, 8, 8)
    for t, s in zip(teachers, students):
        one_minus_cosine = 1 - F.cosine_similarity(t, s, dim=1)[:, None]  # ½‖t̂ − ŝ‖² = 1 − cos
        assert torch.allclose(normalized_difference(t, s), one_minus_cosine, atol=1e-6)
        expected = expected * F.interpolate(one_minus_cosine, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(stfpm_anomaly_map(teachers, students, (8, 8)), expected[:, 0], atol=1e-6)
    # a bilinear upsampling of a 1x1 map is constant
    flat = stfpm_anomaly_map([teachers[1][:, :, :1, :1]], [students[1][:, :, :1, :1]], (5, 5))
    assert torch.allclose(flat, flat[:, :1, :1].expand(-1, 5, 5))


def test_defaults_follow_the_reference():
    defaults = {k: p.default for k, p in inspect.signature(Stfpm.__init__).parameters.items() if k != "self"}
    training = TrainingConfig(**Stfpm.training_defaults).to_dict()  # declared once, in the loop
    assert defaults["backbone"] == "resnet18" and defaults["layers"] == ("layer1", "layer2", "layer3")
    assert (defaults["lr"], defaults["momentum"], defaults["weight_decay"]) == (0.4, 0.9, 1e-3)
    assert (training["max_epochs"], training["patience"], training["gradient_clip_val"]) == (100, 5, 0.0)
    assert training["precise_bn"] is True  # our deviation: the student's statistics match its final weights


@pytest.fixture(scope="module")
def trained(datasets_64):
    model = create("stfpm", backbone=BACKBONE, image_size=64, max_epochs=3, batch_size=6, device="cpu")
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    model.fit(datasets_64[0], verbose=False)
    return model, teacher_before, student_before


def test_only_the_student_learns(trained):
    model, teacher_before, student_before = trained
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())
    assert not all(torch.equal(v, student_before[k]) for k, v in model.student.state_dict().items())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert {id(p) for g in model.configure_optimizers()[0].param_groups for p in g["params"]} == {
        id(p) for p in model.student.parameters()
    }


def test_the_students_batch_norm_statistics_belong_to_its_final_weights(trained, datasets_64):
    # precise_bn re-estimated them after the last epoch: doing it again by hand changes nothing, whereas the
    # exponential averages left by training (precise_bn=False) describe earlier weights.
    from torch.utils.data import DataLoader

    from adlearn.train import recalibrate_batch_norm, trainable_batch_norms

    model = trained[0]
    layers = trainable_batch_norms(model)
    assert layers and all(any(layer is m for m in model.student.modules()) for layer in layers)
    kept = [layer.running_mean.clone() for layer in layers]
    recalibrate_batch_norm(model, DataLoader(datasets_64[0], batch_size=6), model.batch_norm_forward)
    for layer, before in zip(layers, kept):
        torch.testing.assert_close(layer.running_mean, before)

    stale = create(
        "stfpm", backbone=BACKBONE, image_size=64, max_epochs=3, batch_size=6, device="cpu", precise_bn=False
    ).fit(datasets_64[0], verbose=False)
    differences = [(a.running_mean - b.running_mean).abs().max() for a, b in zip(trainable_batch_norms(stale), layers)]
    assert max(differences) > 1e-3


def test_trains_and_predicts_finite_maps(trained, datasets_64):
    model = trained[0]
    assert model.history.loss[-1] < model.history.loss[0] and model.history.steps == 6
    images = torch.stack([datasets_64[1][i]["image"] for i in range(4)])
    prediction = model.predict(images)
    assert prediction.anomaly_map.shape == (4, 64, 64) and prediction.anomaly_map.isfinite().all()
    assert (prediction.anomaly_map >= 0).all()  # a product of values in [0, 2]
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_short_fit(bottle_fit):
    # The CI check (~80 CPU s): the cpu preset on 60 evenly spaced training images (48 after the 20 % hold-out),
    # batches of 8, 4 epochs. Measured (seed 0, one thread): image AUROC 0.997, pixel AUROC 0.958, the held-out
    # loss 6.31 -> 2.84 (the recipe below: 1.000 / 0.971); the bounds leave room for another CPU's rounding.
    results = bottle_fit("stfpm", max_epochs=4, batch_size=8)
    assert results["image_auroc"] >= 0.98 and results["pixel_auroc"] >= 0.94, results


@pytest.mark.slow
@pytest.mark.mvtec
@pytest.mark.recipe  # ~250 CPU s: make test-recipes
def test_real_bottle_with_held_out_normal_images(bottle_fit):
    # docs/log/2026-12-06-benchmarks-history.md: with the student's batch-norm statistics re-estimated (precise_bn, the default) the
    # held-out normal images' loss and the test pixel AUROC improve together, epoch after epoch. Seed 0, 10
    # epochs (the CI budget; the loss was still falling): image AUROC 1.000, pixel AUROC 0.971; its epochs
    # 7-25 all scored 0.964-0.978, and seed 1 reached 0.963 at epoch 10, so the bound holds under another
    # CPU's rounding. With precise_bn=False the same run scored 0.92 at epoch 10 (seed 1). The test set is
    # never seen: validation is on 20 % of the training images.
    model, results = bottle_fit(
        "stfpm", n_train=None, preset=None, return_model=True, backbone=BACKBONE, val_fraction=0.2, max_epochs=10
    )
    assert model.history.val_metric == "loss" and model.precise_bn
    assert model.history.val[-1] < model.history.val[0] / 2  # the held-out loss keeps falling
    assert results["image_auroc"] >= 0.99 and results["pixel_auroc"] >= 0.95, results
