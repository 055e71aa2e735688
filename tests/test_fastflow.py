"""FastFlow: loss and map against independent computations; the architecture; training, the best checkpoint, CLI.
(Save/load, seeding and input errors: tests/test_model_contract.py.)"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adlearn.models import create, load
from adlearn.models.fastflow import Fastflow, build_flow, fastflow_anomaly_map, fastflow_loss
from adlearn.train import TrainingConfig

BACKBONE = "efficientnet_lite0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def test_loss_is_the_negative_log_likelihood_with_an_autograd_jacobian():
    torch.manual_seed(0)
    flow = build_flow(channels=4, height=3, width=2, flow_steps=3, conv3x3_only=False, hidden_ratio=1.0).double()
    for parameter in flow.parameters():  # move away from the near-identity initialisation
        parameter.data += 0.3 * torch.randn_like(parameter)
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    z, log_jac_det = flow(x)
    expected = []
    for sample in x:  # log|det ∂z/∂x| of the flattened 24 -> 24 map, by autograd

        def f(flat):
            return flow(flat.reshape(1, 4, 3, 2))[0].reshape(-1)

        jacobian = torch.autograd.functional.jacobian(f, sample.reshape(-1))  # (24, 24)
        z_sample = f(sample.reshape(-1))
        expected.append(0.5 * (z_sample**2).sum() - torch.linalg.slogdet(jacobian).logabsdet)
    expected = torch.stack(expected).mean()
    assert float(fastflow_loss([z], [log_jac_det]).detach()) == pytest.approx(float(expected.detach()), rel=1e-9)
    # two scales add up
    assert float(fastflow_loss([z, z], [log_jac_det, log_jac_det]).detach()) == pytest.approx(
        2 * float(expected.detach())
    )


def test_anomaly_map_formula():
    generator = torch.Generator().manual_seed(0)
    zs = [torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 5, 2, 2, generator=generator)]
    expected = 0
    for z in zs:  # −exp(−½ mean_c z²) per position, upsampled, averaged
        numbers = z.numpy()
        likelihood = np.exp(-0.5 * (numbers**2).mean(axis=1, keepdims=True))
        expected = expected + F.interpolate(
            torch.from_numpy(-likelihood), size=(8, 8), mode="bilinear", align_corners=False
        ) / len(zs)
    anomaly_map = fastflow_anomaly_map(zs, (8, 8))
    assert anomaly_map.shape == (2, 8, 8)
    assert torch.allclose(anomaly_map, expected[:, 0], atol=1e-6)
    assert (anomaly_map <= 0).all() and (anomaly_map >= -1).all()
    assert float(fastflow_anomaly_map([torch.zeros(1, 3, 2, 2)], (4, 4)).max()) == -1.0  # z = 0: most normal


def test_defaults_follow_the_reference():
    defaults = {k: p.default for k, p in inspect.signature(Fastflow.__init__).parameters.items() if k != "self"}
    training = TrainingConfig(**Fastflow.training_defaults).to_dict()  # declared once, in the loop
    assert (defaults["backbone"], defaults["flow_steps"], defaults["conv3x3_only"], defaults["hidden_ratio"]) == (
        "resnet18",
        8,
        False,
        1.0,
    )
    assert (defaults["lr"], defaults["weight_decay"], training["max_epochs"], training["patience"]) == (
        1e-3,
        1e-5,
        500,
        3,
    )


@pytest.fixture(scope="module")
def model():
    return create("fastflow", backbone=BACKBONE, image_size=64, max_epochs=3, batch_size=6, device="cpu")


def test_architecture(model):
    # efficientnet_lite0 stages of stride 4, 8, 16 (blocks.1/2/4): 24, 40, 112 channels
    assert model.feature_shapes == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert [list(norm.normalized_shape) for norm in model.norms] == [[24, 16, 16], [40, 8, 8], [112, 4, 4]]
    assert [len(flow) for flow in model.flows] == [8, 8, 8]
    kernels = [block.subnet[0].kernel_size[0] for block in model.flows[0]]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]
    assert model.flows[0][0].subnet[0].out_channels == 12  # hidden = int(C1 · 1.0), C1 = 24 − 12
    assert all(block.clamp == 2.0 for flow in model.flows for block in flow)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"norms", "flows"}  # the backbone is frozen
    only_3x3 = create(
        "fastflow", backbone=BACKBONE, image_size=64, conv3x3_only=True, flow_steps=2, hidden_ratio=0.5, device="cpu"
    )
    assert [b.subnet[0].kernel_size[0] for b in only_3x3.flows[0]] == [3, 3]
    assert only_3x3.flows[0][0].subnet[0].out_channels == 6


@pytest.fixture(scope="module")
def trained(model, datasets_64, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("fastflow") / "best.pt"
    model.fit(datasets_64[0], val_data=datasets_64[1], checkpoint_path=checkpoint, verbose=False)
    return model, checkpoint


def test_trains_and_predicts_finite_maps(trained, datasets_64):
    model = trained[0]
    history = model.history
    assert history.loss[-1] < history.loss[0] and history.steps == 6
    assert history.val_metric == "pixel_auroc" and all(0 <= v <= 1 for v in history.val)
    images = torch.stack([datasets_64[1][i]["image"] for i in range(4)])
    prediction = model.predict(images)
    assert prediction.anomaly_map.shape == (4, 64, 64) and prediction.anomaly_map.isfinite().all()
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


def test_best_checkpoint_gives_the_restored_best_epochs_predictions(trained, datasets_64):
    model, checkpoint = trained
    images = torch.stack([datasets_64[1][i]["image"] for i in range(3)])
    expected = model.predict(images).anomaly_map
    assert torch.equal(load(checkpoint).predict(images).anomaly_map, expected)  # best epoch, restored


def test_transformer_backbone():
    model = create(
        "fastflow",
        backbone="deit_tiny_distilled_patch16_224",
        pretrained="none",
        image_size=224,
        flow_steps=2,
        device="cpu",
    )
    assert model.feature_shapes == [(192, 14, 14)] and model.feature_extractor.n_blocks == 8
    z, log_jac_det = model.flow_forward(model.extract_features(torch.randn(1, 3, 224, 224)))
    assert z[0].shape == (1, 192, 14, 14) and log_jac_det[0].isfinite().all()
    with pytest.raises(ValueError, match="image_size=224"):
        create("fastflow", backbone="deit_tiny_distilled_patch16_224", pretrained="none", image_size=256)


@pytest.mark.slow
@pytest.mark.mvtec
@pytest.mark.recipe  # ~330 CPU s: make test-recipes
def test_real_bottle_with_label_free_early_stopping(mvtec_bottle_root):
    # The recipe docs/log/2026-12-06-benchmarks-history.md reports: the offline efficientnet_lite2, its stages of strides 8/16/32, 3x3
    # subnets, early stopping on synthetic defects pasted into held-out training images (the test set is never
    # seen). Measured here (patience 3, the default): seed 0 stopped after 7 epochs and kept epoch 4, image
    # AUROC 1.000, pixel AUROC 0.967; every one of its first ten epochs scored >= 0.951 on the test set (seeds 1
    # and 2: >= 0.949), so another CPU's rounding, which may move the kept epoch, stays above the bound.
    from adlearn.data import MVTecDataset
    from adlearn.evaluate import fit_and_evaluate

    model = create(
        "fastflow",
        backbone="efficientnet_lite2",
        layers=("layer2", "layer3", "layer4"),
        conv3x3_only=True,
        batch_size=8,
        val_fraction=0.2,
        val_anomalies="synthetic",
        device="cpu",
        seed=0,
    )
    train = MVTecDataset(mvtec_bottle_root, "bottle", "train", transform=model.transform)
    test = MVTecDataset(mvtec_bottle_root, "bottle", "test", transform=model.transform)
    results = fit_and_evaluate(model, train, test)
    assert model.history.val_metric == "pixel_auroc" and model.history.best_epoch < len(model.history.epoch)
    assert results["image_auroc"] >= 0.99 and results["pixel_auroc"] >= 0.945, results
