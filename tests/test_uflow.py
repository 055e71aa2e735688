"""U-Flow: the U-shaped flow (inverse and log-det against autograd), loss and map formulas, the NFA mask at
test time and its pixel F1 in `evaluate`, training, the best checkpoint, CLI, the real
bottle (slow). (Save/load, seeding and input errors: tests/test_model_contract.py.)"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adlearn.metrics import mask_f1
from adlearn.models import create, load
from adlearn.models.uflow import Uflow, UShapedFlow, channels_going_up, uflow_anomaly_map, uflow_loss
from adlearn.train import TrainingConfig

BACKBONE = "efficientnet_lite0"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPES = [(4, 8, 8), (8, 4, 4), (8, 2, 2)]


def test_defaults_follow_the_reference():
    defaults = {k: p.default for k, p in inspect.signature(Uflow.__init__).parameters.items() if k != "self"}
    training = TrainingConfig(**Uflow.training_defaults).to_dict()
    assert (
        defaults["flow_steps"],
        defaults["affine_clamp"],
        defaults["affine_subnet_channels_ratio"],
        defaults["permute_soft"],
        defaults["lr"],
        defaults["weight_decay"],
        defaults["lr_decay_steps"],
    ) == (4, 2.0, 1.0, False, 1e-3, 1e-5, 25_000)
    assert (defaults["nfa_window"], defaults["nfa_probability_thr"], defaults["nfa_epsilon"]) == (7, 0.5, 1.0)
    assert defaults["layers"] == ("layer1", "layer2", "layer3")  # the reference's CNN layout (strides 4/8/16)
    assert defaults["subnet_kernels"] == (3, 1)  # 3x3 / 1x1 alternating; the cpu preset: all 3x3
    assert (training["max_epochs"], training["patience"]) == (200, 20) and Uflow.scheduler_interval == "step"


def test_u_shaped_flow_layout():
    flow = UShapedFlow(SHAPES, flow_steps=2)
    # coarsest: 8 channels, 4 go up (-> 1 channel at 4x4); middle: 8 + 1 = 9, 4 go up; finest: 4 + 1 = 5
    assert flow.stage_channels == [5, 9, 8] and flow.up_channels == [0, 4, 4] and flow.latent_channels == [5, 5, 4]
    assert [channels_going_up(c) for c in (7, 8, 152, 320)] == [0, 4, 76, 160]
    assert [block.subnet[0].kernel_size[0] for block in flow.stages[0]] == [3, 1]
    kernels = [
        [b.subnet[0].kernel_size[0] for b in stage] for stage in UShapedFlow(SHAPES, 3, subnet_kernels=(3,)).stages
    ]
    assert kernels == [[3, 3, 3]] * 3  # all 3x3: an option, not the reference's layout
    with pytest.raises(ValueError, match="odd kernel sizes"):
        UShapedFlow(SHAPES, subnet_kernels=(2,))
    with pytest.raises(ValueError, match="exactly half"):
        UShapedFlow([(4, 8, 8), (8, 3, 3)])


def test_u_shaped_flow_inverts_and_log_det_matches_autograd():
    torch.manual_seed(0)
    flow = UShapedFlow(SHAPES, flow_steps=2).double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    xs = [torch.randn(2, *shape, dtype=torch.float64) for shape in SHAPES]
    latents, log_det = flow(xs)
    assert [tuple(z.shape[1:]) for z in latents] == [(5, 8, 8), (5, 4, 4), (4, 2, 2)]
    back, log_det_rev = flow(latents, rev=True)
    for b, x in zip(back, xs):
        torch.testing.assert_close(b, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_rev, -log_det)
    sizes = [math.prod(s) for s in SHAPES]
    for i in range(2):

        def flat(vector):
            parts = [p.reshape(1, *s) for p, s in zip(torch.split(vector, sizes), SHAPES)]
            return torch.cat([z.flatten() for z in flow(parts)[0]])

        jacobian = torch.autograd.functional.jacobian(flat, torch.cat([x[i].flatten() for x in xs]))
        assert jacobian.shape == (sum(sizes), sum(sizes))  # latents hold exactly as many numbers
        assert float(torch.linalg.slogdet(jacobian).logabsdet.detach()) == pytest.approx(
            float(log_det[i].detach()), abs=1e-8
        )
    latents, log_det = [z.detach() for z in latents], log_det.detach()
    expected = np.mean([0.5 * sum(float(z[i].pow(2).sum()) for z in latents) - float(log_det[i]) for i in range(2)])
    assert float(uflow_loss(latents, log_det).detach()) == pytest.approx(expected)


def test_anomaly_map_formula():
    generator = torch.Generator().manual_seed(0)
    zs = [torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 5, 2, 2, generator=generator)]
    expected = (
        1
        - sum(
            F.interpolate(
                torch.exp(-0.5 * (z**2).mean(1, keepdim=True)), size=(8, 8), mode="bilinear", align_corners=False
            )
            for z in zs
        )[:, 0]
        / 2
    )
    torch.testing.assert_close(uflow_anomaly_map(zs, (8, 8)), expected)
    assert float(uflow_anomaly_map([torch.zeros(1, 2, 2, 2)], (4, 4)).max()) == 0.0  # z = 0: normal


def test_mask_f1_by_hand():
    truth = np.array([[[1, 1, 0, 0]]])
    guess = np.array([[[1, 0, 1, 0]]], dtype=bool)
    assert mask_f1(truth, guess) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    with pytest.raises(ValueError, match="anomalous pixel"):
        mask_f1(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="differ in size"):
        mask_f1(truth, guess[:, :, :2])


@pytest.fixture(scope="module")
def trained(datasets_64, tmp_path_factory):
    model = create(
        "uflow", backbone=BACKBONE, image_size=64, flow_steps=2, max_epochs=2, batch_size=6, device="cpu", seed=0
    )
    checkpoint = tmp_path_factory.mktemp("uflow") / "best.pt"
    model.fit(datasets_64[0], val_data=datasets_64[1], checkpoint_path=checkpoint, verbose=False)
    return model, checkpoint


def test_trains_and_predicts_a_map_and_an_nfa_mask(trained, datasets_64):
    model = trained[0]
    assert model.feature_shapes == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]  # lite0 strides 4/8/16
    # coarsest: 112 channels, 56 go up (-> 14 at 2x); middle: 40 + 14 = 54, 24 go up (-> 6); finest: 24 + 6
    assert model.flow.latent_channels == [24 + 6, 54 - 24, 112 - 56]
    assert model.history.loss[-1] < model.history.loss[0] and model.history.steps == 4
    images = torch.stack([datasets_64[1][i]["image"] for i in range(4)])
    prediction = model.predict(images)
    assert prediction.anomaly_map.shape == prediction.pred_mask.shape == (4, 64, 64)
    assert prediction.pred_mask.dtype == torch.bool
    log_nfa, mask = model.segment(images)
    assert torch.equal(mask, prediction.pred_mask) and torch.equal(mask, log_nfa < 0)
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


def test_evaluate_reports_the_f1_of_the_nfa_mask(trained, datasets_64):
    from adlearn.evaluate import evaluate

    results = evaluate(trained[0], datasets_64[1], return_predictions=True)
    predictions = results["predictions"]
    assert results["pixel_f1_mask"] == pytest.approx(mask_f1(predictions["masks"], predictions["pred_masks"]))
    assert 0.0 <= results["pixel_f1_mask"] <= 1.0 and results["pixel_f1max"] is not None


def test_blurred_map_is_the_raw_map_through_a_gaussian_blur(trained, datasets_64):
    """``blur_sigma`` (the cpu preset's smoothing): predict rebuilt from the parts, against SciPy's Gaussian filter."""
    from scipy.ndimage import gaussian_filter

    model = trained[0]
    images = torch.stack([datasets_64[1][i]["image"] for i in range(2)])
    blurred = create(
        "uflow", backbone=BACKBONE, pretrained="none", image_size=64, flow_steps=2, blur_sigma=2.0, device="cpu"
    )
    missing, unexpected = blurred.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("blur.") for key in missing)  # the kernel only
    blurred.mark_fitted()
    raw, smooth = model.predict(images), blurred.predict(images)
    assert model.blur is None  # the reference's default: no blur
    expected = np.stack([gaussian_filter(m, sigma=2.0, mode="mirror", truncate=4.0) for m in raw.anomaly_map.numpy()])
    np.testing.assert_allclose(smooth.anomaly_map.numpy(), expected, atol=1e-5)
    torch.testing.assert_close(smooth.pred_score, smooth.anomaly_map.flatten(1).amax(1))
    assert torch.equal(smooth.pred_mask, raw.pred_mask)  # the NFA mask reads the latents, not the map
    with pytest.raises(ValueError, match="blur_sigma"):
        create("uflow", backbone=BACKBONE, pretrained="none", image_size=64, blur_sigma=-1.0, device="cpu")


def test_best_checkpoint_loads(trained):
    assert load(trained[1]).history.steps >= 2


def test_learning_rate_decays_per_step():
    model = create(
        "uflow",
        backbone=BACKBONE,
        pretrained="none",
        image_size=64,
        flow_steps=1,
        lr_decay_steps=10,
        max_steps=1,
        device="cpu",
    )
    optimizer, scheduler = model.configure_optimizers()
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4e-3)


@pytest.mark.slow
@pytest.mark.mvtec
def test_real_bottle_after_two_epochs(bottle_fit):
    # The cpu preset (offline efficientnet_lite2, strides 4/8/16, all-3x3 subnets, 8 flow steps, 384 px, map blur
    # σ = 6) stopped after two epochs: image AUROC 0.998, pixel AUROC 0.948 (seed 0, 2026-12-03, shared machine; the
    # 4-step preset gave 0.966 / 0.884). Its full training: 0.999 / 0.952 over seeds 0-2 (docs/log/2026-12-06-benchmarks-history.md, "U-Flow").
    results = bottle_fit("uflow", n_train=None, max_epochs=2)
    assert results["image_auroc"] >= 0.95 and results["pixel_auroc"] >= 0.87, results
    assert 0.0 <= results["pixel_f1_mask"] <= 1.0
