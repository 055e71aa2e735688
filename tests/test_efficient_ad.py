"""EfficientAD: the networks' shapes and receptive field, the losses and the quantiles against brute force
and torch/torchvision, the colour changes, the teacher statistics and map quantiles after fit, the teacher
distillation, the natural-image stream, save/load, errors."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from adlearn.components.pdn import PatchDescriptionNetwork
from adlearn.models import create, load
from adlearn.models.common import exact_quantile
from adlearn.models.efficient_ad import (
    AutoEncoder,
    EfficientAd,
    adjust_color,
    efficient_ad_anomaly_map,
    efficient_ad_loss,
    hard_feature_loss,
)
from adlearn.train import TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("model_size", ["small", "medium"])
def test_pdn_and_autoencoder_give_maps_of_side_h_over_4_minus_8(size, model_size):
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert PatchDescriptionNetwork(384, model_size)(images).shape == (1, 384, size // 4 - 8, size // 4 - 8)
        assert AutoEncoder(384, (size, size))(images).shape == (1, 384, size // 4 - 8, size // 4 - 8)


@pytest.mark.parametrize("model_size", ["small", "medium"])
def test_pdn_computes_a_slice_of_its_channels_like_the_full_output(model_size):
    torch.manual_seed(0)
    pdn, images = PatchDescriptionNetwork(12, model_size), torch.randn(2, 3, 64, 64)
    full = pdn(images)
    for channels in (slice(0, 6), slice(6, 12)):
        assert torch.allclose(pdn(images, channels), full[:, channels], atol=1e-5)


def test_training_losses_and_gradients_equal_those_of_full_student_outputs():
    """losses() computes only the student halves it reads: same losses and gradients as slicing full outputs."""
    torch.manual_seed(0)
    model = EfficientAd(teacher_weights="none", image_size=64, teacher_out_channels=8, penalty=False, device="cpu")
    model.eval()  # no dropout: both passes see the same network
    images, c = torch.randn(1, 3, 64, 64), 8
    ours = model.losses(images, augment=False)
    ours["loss"].backward()
    grads = [p.grad.clone() for p in model.student.parameters()]
    model.zero_grad()
    teacher, student, autoencoder = model.extract_features(images)
    reference = efficient_ad_loss(teacher, student[:, :c], None, teacher, autoencoder, student[:, c:])
    reference["loss"].backward()
    for name in ("student", "autoencoder", "student_autoencoder", "loss"):
        assert float(ours[name]) == pytest.approx(float(reference[name]), rel=1e-5)
    for ours_grad, parameter in zip(grads, model.student.parameters()):
        assert torch.allclose(ours_grad, parameter.grad, rtol=1e-4, atol=1e-7)


def test_autoencoder_at_256_px_follows_the_reference_schedule():
    autoencoder = AutoEncoder(384, (256, 256))
    assert [s[0] for s in autoencoder.upsample_sizes] == [3, 8, 15, 32, 63, 127, 56]
    assert autoencoder.bottleneck.kernel_size == (8, 8)
    # the reference's parameter count: encoder 6 convs, decoder 8 convs (anomalib 2.7, 256 px)
    assert sum(p.numel() for p in autoencoder.parameters()) == 1_096_320


def test_pdn_small_has_the_reference_parameters_and_a_33_pixel_receptive_field():
    teacher = PatchDescriptionNetwork(384, "small")
    assert {k: tuple(v.shape) for k, v in teacher.state_dict().items()} == {
        "conv1.weight": (128, 3, 4, 4),
        "conv1.bias": (128,),
        "conv2.weight": (256, 128, 4, 4),
        "conv2.bias": (256,),
        "conv3.weight": (256, 256, 3, 3),
        "conv3.bias": (256,),
        "conv4.weight": (384, 256, 4, 4),
        "conv4.bias": (384,),
    }
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    teacher(images)[0, :, 3, 3].sum().backward()  # one output position
    rows, cols = images.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 44, 12, 44)  # 33 × 33 pixels at 4·3
    assert sum(p.numel() for p in teacher.parameters()) == 2_694_144


# ---------------------------------------------------------------------------- losses and quantiles
def test_exact_quantile_matches_torch_and_numpy():
    values = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.1, 0.5, 0.9, 0.995, 0.999, 1.0):
        assert float(exact_quantile(values, q)) == pytest.approx(float(torch.quantile(values, q)), rel=1e-6, abs=1e-6)
    big = torch.rand(2**24 + 3, generator=torch.Generator().manual_seed(1))  # older torch.quantile refused this
    assert float(exact_quantile(big, 0.9)) == pytest.approx(float(np.quantile(big.numpy(), 0.9)), abs=1e-7)


def test_hard_feature_loss_is_per_image_mean_above_the_quantile():
    generator = torch.Generator().manual_seed(2)
    teacher, student = torch.randn(2, 8, 5, 5, generator=generator), torch.randn(2, 8, 5, 5, generator=generator)
    expected = []
    for b in range(2):
        d = ((teacher[b] - student[b]) ** 2).numpy().ravel()
        expected.append(d[d >= np.quantile(d, 0.9)].mean())
    assert float(hard_feature_loss(teacher, student, 0.9)) == pytest.approx(np.mean(expected), rel=1e-5)
    # a batch of two is the mean of two batches of one (the reference pools the batch: pitfall (c))
    singles = [float(hard_feature_loss(teacher[b : b + 1], student[b : b + 1], 0.9)) for b in range(2)]
    assert float(hard_feature_loss(teacher, student, 0.9)) == pytest.approx(np.mean(singles), rel=1e-6)


def test_total_loss_adds_the_student_penalty_and_autoencoder_terms():
    g = torch.Generator().manual_seed(3)
    t, s, n, ta, a, sa = (torch.randn(1, c, 4, 4, generator=g) for c in (6, 12, 12, 6, 6, 12))
    losses = efficient_ad_loss(t, s[:, :6], n[:, :6], ta, a, sa[:, 6:], quantile=0.999)
    hard = ((t - s[:, :6]) ** 2).flatten()
    assert float(losses["student"]) == pytest.approx(
        float(hard[hard >= torch.quantile(hard, 0.999)].mean() + (n[:, :6] ** 2).mean()), rel=1e-6
    )
    assert float(losses["autoencoder"]) == pytest.approx(float(((ta - a) ** 2).mean()), rel=1e-6)
    assert float(losses["student_autoencoder"]) == pytest.approx(float(((a - sa[:, 6:]) ** 2).mean()), rel=1e-6)
    assert float(losses["loss"]) == pytest.approx(
        sum(float(losses[k]) for k in ("student", "autoencoder", "student_autoencoder")), rel=1e-6
    )


@pytest.mark.parametrize("kind", ["brightness", "contrast", "saturation"])
def test_colour_changes_match_torchvision(kind):
    import torchvision.transforms.v2.functional as TF

    images = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(4))
    reference = getattr(TF, f"adjust_{kind}")
    for factor in (0.8, 1.13):
        assert torch.allclose(adjust_color(images, kind, factor), reference(images, factor), atol=1e-6)


def test_map_normalisation_sends_the_quantiles_to_0_and_0_1():
    map_st = torch.tensor([[[[1.0, 3.0]]]])
    map_ae = torch.tensor([[[[10.0, 20.0]]]])
    combined = efficient_ad_anomaly_map(map_st, map_ae, torch.tensor([1.0, 3.0, 10.0, 20.0]))
    assert torch.allclose(combined, torch.tensor([[[0.0, 0.1]]]))
    assert torch.allclose(efficient_ad_anomaly_map(map_st, map_ae), 0.5 * (map_st + map_ae)[:, 0])


# ---------------------------------------------------------------------------- the model
def test_defaults_follow_the_reference_and_bad_options_are_named(tmp_path):
    defaults = {k: p.default for k, p in inspect.signature(EfficientAd.__init__).parameters.items() if k != "self"}
    assert (defaults["model_size"], defaults["teacher_out_channels"], defaults["batch_size"]) == ("small", 384, 1)
    assert (defaults["lr"], defaults["weight_decay"], defaults["hard_quantile"]) == (1e-4, 1e-5, 0.999)
    assert defaults["map_quantiles"] == (0.9, 0.995)
    # the paper preset: its 70 000 steps are the only limit (no epoch cap that would end a small category early)
    paper = TrainingConfig(**{**EfficientAd.training_defaults, **EfficientAd.preset("paper")})
    assert (paper.max_steps, paper.max_epochs, paper.val_fraction) == (70_000, None, 0.1)  # 10 % for the quantiles
    assert EfficientAd.preset("cpu") == {"image_size": 128, "max_steps": 1800, "val_fraction": 0.1}
    with pytest.raises(ValueError, match="divisible by 32 and at least 64.*image_size=256"):
        create("efficient_ad", image_size=100, device="cpu")
    with pytest.raises(ValueError, match="divisible by 32 and at least 64"):
        create("efficient_ad", image_size=32, device="cpu")
    with pytest.raises(ValueError, match="model_size must be one of"):
        create("efficient_ad", model_size="large", device="cpu")
    # teacher weights: a missing file, and a file of the wrong size, are named
    model = create("efficient_ad", image_size=64, teacher_weights=str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no teacher weights"):
        model.prepare_teacher()
    torch.save(PatchDescriptionNetwork(256, "small").state_dict(), tmp_path / "narrow.pth")
    model = create("efficient_ad", image_size=64, teacher_weights=str(tmp_path / "narrow.pth"), device="cpu")
    with pytest.raises(ValueError, match="does not hold a small PDN with 384 output channels.*conv4"):
        model.prepare_teacher()
    torch.save(PatchDescriptionNetwork(384, "medium").state_dict(), tmp_path / "medium.pth")
    model = create("efficient_ad", image_size=64, teacher_weights=str(tmp_path / "medium.pth"), device="cpu")
    with pytest.raises(ValueError, match="pass model_size="):
        model.prepare_teacher()


def test_teacher_weights_in_the_reference_layout_load(tmp_path):
    source = PatchDescriptionNetwork(384, "small")
    torch.save(source.state_dict(), tmp_path / "pretrained_teacher_small.pth")
    model = create(
        "efficient_ad", image_size=64, teacher_weights=str(tmp_path / "pretrained_teacher_small.pth"), device="cpu"
    )
    model.prepare_teacher()
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.teacher.state_dict().items())


@pytest.fixture(scope="module")
def trained(datasets_64):
    model = create(
        "efficient_ad", teacher_weights="none", image_size=64, max_steps=6, val_fraction=0.25, device="cpu", seed=0
    )
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.fit(datasets_64[0], verbose=False)
    return model, teacher_before


def test_teacher_is_frozen_and_normalised_by_its_training_statistics(trained, datasets_64):
    model, teacher_before = trained
    assert all(torch.equal(v, teacher_before[k]) for k, v in model.teacher.state_dict().items())
    from adlearn.data import hold_out

    train, _ = hold_out(datasets_64[0], 0.25, seed=0)  # what fit trained on
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    with torch.no_grad():
        outputs = model.teacher(images).double()
    mean, std = outputs.mean((0, 2, 3)), outputs.std((0, 2, 3), unbiased=False)
    assert torch.allclose(model.teacher_mean.flatten().double(), mean, atol=1e-5)
    assert torch.allclose(model.teacher_std.flatten().double(), std, rtol=1e-4)
    optimizer, _ = model.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in [*model.student.parameters(), *model.autoencoder.parameters()]
    }
    assert set(model.history.losses) == {"loss", "student", "autoencoder", "student_autoencoder"}
    assert model.history.steps == 6


def test_map_quantiles_come_from_the_held_out_normal_images(trained, datasets_64):
    model = trained[0]
    from adlearn.data import hold_out

    _, held_out = hold_out(datasets_64[0], 0.25, seed=0)
    images = torch.stack([held_out[i]["image"] for i in range(len(held_out))])
    with torch.no_grad():
        map_st, map_ae = model.raw_maps(images)
    expected = [torch.quantile(m.flatten(), q) for m in (map_st, map_ae) for q in (0.9, 0.995)]
    assert torch.allclose(model.quantiles, torch.stack(expected), rtol=1e-5)


def test_without_held_out_images_the_map_quantiles_come_from_the_training_images_with_a_warning(datasets_64):
    model = create("efficient_ad", teacher_weights="none", image_size=64, max_steps=1, device="cpu", seed=0)
    with pytest.warns(UserWarning, match="map quantiles come from the training images.*val_fraction"):
        model.fit(datasets_64[0], verbose=False)
    images = torch.stack([datasets_64[0][i]["image"] for i in range(len(datasets_64[0]))])
    with torch.no_grad():
        map_st, map_ae = model.raw_maps(images)
    expected = [torch.quantile(m.flatten(), q) for m in (map_st, map_ae) for q in (0.9, 0.995)]
    assert torch.allclose(model.quantiles, torch.stack(expected), rtol=1e-5)


def test_predicts_normalised_maps(trained, datasets_64):
    model = trained[0]
    images = torch.stack([datasets_64[1][i]["image"] for i in range(3)])
    prediction = model.predict(images)
    assert prediction.anomaly_map.shape == (3, 64, 64) and prediction.anomaly_map.isfinite().all()
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))
    with torch.no_grad():
        map_st, map_ae = model.raw_maps(images)
        qa_st, qb_st, qa_ae, qb_ae = model.quantiles
        expected = 0.5 * 0.1 * (map_st - qa_st) / (qb_st - qa_st) + 0.5 * 0.1 * (map_ae - qa_ae) / (qb_ae - qa_ae)
    assert torch.allclose(prediction.anomaly_map, expected[:, 0], atol=1e-6)


def test_load_restores_the_quantiles_without_distilling(trained, tmp_path, monkeypatch):
    # Identical predictions after save/load and same-seed scores: tests/test_model_contract.py.
    import adlearn.models.efficient_ad as model_module

    model = trained[0]
    model.save(tmp_path / "effad.pt")
    monkeypatch.setattr(model_module, "distill_teacher", lambda *a, **k: pytest.fail("load must not distil"))
    restored = load(tmp_path / "effad.pt")
    assert torch.equal(restored.quantiles, model.quantiles)


# ---------------------------------------------------------------------------- natural images and distillation
def test_natural_image_crops_are_seeded_normalised_views():
    from adlearn.data import NaturalImageCrops, natural_image_names
    from adlearn.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    assert len(natural_image_names()) >= 10  # photographs from three wheels
    a, b = NaturalImageCrops(64, seed=1).sample(3), NaturalImageCrops(64, seed=1).sample(3)
    assert a.shape == (3, 3, 64, 64) and torch.equal(a, b)
    raw = NaturalImageCrops((32, 48), seed=1, normalize=False).sample(2)
    assert raw.shape == (2, 3, 32, 48) and raw.min() >= 0 and raw.max() <= 1
    normalised = NaturalImageCrops((32, 48), seed=1).sample(2)
    mean, std = torch.tensor(IMAGENET_MEAN)[None, :, None, None], torch.tensor(IMAGENET_STD)[None, :, None, None]
    assert torch.allclose(normalised * std + mean, raw, atol=1e-6)
    grey = NaturalImageCrops(32, seed=2, grayscale=1.0, normalize=False).sample(2)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_distillation_learning_rate_schedules_are_cached_apart(tmp_path, monkeypatch):
    from adlearn.models.efficient_ad_teacher import default_teacher_path, distill_teacher

    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="lr_schedule"):
        distill_teacher(lr_schedule="step")
    options = {"steps": 3, "batch_size": 2, "crop_size": 64, "lr": 1e-3, "verbose": False}
    cosine, constant = distill_teacher(**options), distill_teacher(lr_schedule="constant", **options)
    assert "cosine" in cosine.name and "cosine" not in constant.name  # the default: cosine
    # the benchmarks find the teacher "auto" uses: a file at default_teacher_path is what distill_teacher returns
    default = default_teacher_path("small")
    default.write_bytes(b"")
    assert distill_teacher("small") == default and "700steps_cosine_128px" in default.name
    first, second = torch.load(cosine), torch.load(constant)
    # same start, same crops: only the learning rates of steps 2 and 3 differ (cosine: 0.75 and 0.25 of lr)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # The caller's random state is the same after distilling (a cache miss) as after reading the file (a hit).
    torch.manual_seed(5)
    expected = torch.rand(3)
    for _ in range(2):  # miss (a new seed's file), then hit
        torch.manual_seed(5)
        distill_teacher(seed=1, **options)
        assert torch.equal(torch.rand(3), expected)


def test_distillation_runs_on_the_shared_loop_and_gives_the_plain_loops_teacher(tmp_path, monkeypatch):
    """The loop's epochs, validation and checkpoints change nothing in the weights: the same initialisation,
    crops, Adam steps and cosine decay as the plain loop below (so a teacher cached before still applies).
    That the distillation learns: the next test."""
    from adlearn.data import NaturalImageCrops
    from adlearn.models.efficient_ad_teacher import distill_teacher, distillation_target, statistics_crops
    from adlearn.train import Trainer

    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    trainers, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trainers.append(self) or fit(self, *a, **k))
    options = {"steps": 6, "batch_size": 2, "crop_size": 64, "lr": 2e-3}
    checkpoint = tmp_path / "checkpoint.pt"
    path, teacher, _ = distill_teacher(**options, return_model=True, verbose=False, checkpoint_path=checkpoint)
    history = trainers[0].history  # 6 epochs of 1 step (a tenth of the steps), each validated on held-out crops
    assert (history.steps, len(history.epoch), history.val_metric, len(history.val)) == (6, 6, "loss", 6)
    # the plain loop the distillation used to be, from the same seed
    torch.manual_seed(0)
    reference = PatchDescriptionNetwork(384, "small")
    target = distillation_target("efficientnet_lite0", 384, 64, seed=0, batch_size=2)
    crops = NaturalImageCrops(64, seed=0)
    crops.sample(statistics_crops(2))  # the views the target's statistics used
    optimizer = torch.optim.Adam(reference.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / 6)))
    for _ in range(6):
        batch = crops.sample(2)
        loss = (reference(batch) - target(batch)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    expected = reference.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in teacher.state_dict().items())
    # cached, and the loop's checkpoint, as PDN state dicts that load back identically
    for saved in (path, checkpoint):
        assert all(torch.equal(value, expected[name]) for name, value in torch.load(saved).items())
    # a second call loads the file: no training
    trainers.clear()
    assert distill_teacher(**options) == path and not trainers


def test_distillation_with_patience_keeps_the_best_epoch_and_is_cached_apart(tmp_path, monkeypatch):
    from adlearn.data import NaturalImageCrops
    from adlearn.models.efficient_ad_teacher import HELD_OUT_SEED, distill_teacher, distillation_error
    from adlearn.train import Trainer

    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    trainers, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trainers.append(self) or fit(self, *a, **k))
    options = {"steps": 5, "batch_size": 2, "crop_size": 64, "lr": 5e-3, "verbose": False}
    path, teacher, target = distill_teacher(patience=1, return_model=True, **options)
    assert path.name.endswith("_patience1.pt") and path != distill_teacher(**options)  # apart from the full run
    history = trainers[0].history
    assert history.stopped in ("early_stopping", "max_steps")
    # the weights kept are those of the epoch with the lowest held-out error (the loop's validation crops)
    held_out = NaturalImageCrops(64, seed=HELD_OUT_SEED).sample(32)
    assert distillation_error(teacher, target, held_out) == pytest.approx(min(history.val), rel=1e-5)


def test_distilled_teacher_is_closer_to_the_backbone_than_a_random_pdn(tmp_path, monkeypatch):
    from adlearn.data import NaturalImageCrops
    from adlearn.models.efficient_ad_teacher import distill_teacher, distillation_error
    from adlearn.train import Trainer

    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    trainers, fit = [], Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trainers.append(self) or fit(self, *a, **k))
    # a short run at a constant learning rate (the default cosine decay spends half of 30 steps below lr / 2)
    path, teacher, target = distill_teacher(
        steps=30, batch_size=4, crop_size=64, lr=1e-3, lr_schedule="constant", return_model=True, verbose=False
    )
    # on the shared loop: 10 epochs of 3 steps; the held-out error it reports after each falls
    history = trainers[0].history
    assert (history.steps, len(history.epoch)) == (30, 10) and history.val[-1] < history.val[0], history.val
    held_out = NaturalImageCrops(64, seed=123).sample(12)  # crops the distillation never saw
    torch.manual_seed(0)
    random_pdn = PatchDescriptionNetwork(384, "small").eval()
    distilled, random_error = (
        distillation_error(teacher, target, held_out),
        distillation_error(random_pdn, target, held_out),
    )
    predict_zero = float(target(held_out).pow(2).mean())  # the targets' own spread
    assert distilled < 0.95 * predict_zero and distilled < 0.9 * random_error, (distilled, random_error, predict_zero)
    # cached: the second call trains nothing and returns the same file, which loads into a model
    assert (
        path.is_file()
        and distill_teacher(steps=30, batch_size=4, crop_size=64, lr=1e-3, lr_schedule="constant") == path
    )
    model = create("efficient_ad", image_size=64, teacher_weights=str(path), device="cpu")
    model.prepare_teacher()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in model.teacher.state_dict().items())
