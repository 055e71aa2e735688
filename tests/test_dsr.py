"""DSR: the VQ model's shapes and weights, the quantised-feature anomalies against brute force, the three
phases' trainable parameters, a tiny fit + predict, save/load, same seed and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY as TINY_MODELS

from adlearn.models import create
from adlearn.models.dsr import dsr_anomaly_map, dsr_image_score, dsr_loss
from adlearn.models.dsr_anomalies import (
    DsrAnomalyGenerator,
    latent_mask,
    quantized_anomalies,
    replacement_codes,
    swap_codes,
)
from adlearn.models.dsr_vq import GeneralAppearanceModel, Residual, load_vq_weights
from adlearn.models.dsr_vq_training import train_vq_model, vq_cache_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

# The contract test's tiny DSR (tests/tiny_models.py), without its epoch count: each test sets its own.
TINY = {key: value for key, value in TINY_MODELS["dsr"].items() if key != "max_epochs"} | dict(device="cpu", seed=0)
VQ_TINY = dict(hiddens=16, residual_layers=2, residual_hiddens=8, num_embeddings=32, embedding_dim=8)


@pytest.fixture
def tiny_natural_images(monkeypatch):
    """The shipped photographs take seconds to decode: three small random 'photographs' instead."""
    import adlearn.data.natural_images as natural

    generator = torch.Generator().manual_seed(0)
    images = tuple(torch.rand(3, 90, 120, generator=generator) for _ in range(3))
    monkeypatch.setattr(natural, "load_natural_images", lambda: images)
    return images


# ----------------------------------------------------------------------------- shapes
def test_vq_model_and_networks_shapes():
    vq = GeneralAppearanceModel(**VQ_TINY).eval()
    features = vq.encode(torch.rand(2, 3, 64, 64))
    assert features["quantized_lo"].shape == features["z_lo"].shape == (2, 8, 8, 8)  # 1/8
    assert features["quantized_hi"].shape == features["z_hi"].shape == (2, 8, 16, 16)  # 1/4
    assert features["codes_hi"].shape == (2, 16, 16) and features["encoded_hi"].shape == (2, 16, 16, 16)
    # quantised vectors are codebook rows: the nearest ones
    flat = features["z_lo"].permute(0, 2, 3, 1).reshape(-1, 8)
    brute = torch.cdist(flat, vq.quantizer_lo.embedding).argmin(1)
    assert torch.equal(features["codes_lo"].flatten(), brute)
    assert vq.decode(features["quantized_lo"], features["quantized_hi"]).shape == (2, 3, 64, 64)
    model = create("dsr", **TINY).eval()
    outputs = model.forward_networks(torch.rand(2, 3, 64, 64))
    assert outputs["general"].shape == outputs["object"].shape == (2, 3, 64, 64)
    assert outputs["detection"].shape == outputs["upsampled"].shape == (2, 2, 64, 64)
    assert model.restriction_lo(features["quantized_lo"]).shape == (2, 8, 8, 8)


def test_residual_skip_carries_the_relu():
    block = Residual(4, 3)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), F.relu(x) + block.block(F.relu(x)))


def test_loss_map_and_score_formulas():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(2, 8, 4, 4, generator=g) for _ in range(4))
    image, other = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    logits, mask = torch.randn(2, 2, 32, 32, generator=g), (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    losses = dsr_loss(a, b, c, d, image, other, logits, mask)
    p = torch.softmax(logits, 1).gather(1, mask.long())
    focal = float((-((1 - p) ** 2) * p.log()).mean())
    expected = float(((a - c) ** 2).mean() + ((b - d) ** 2).mean() + 10 * ((image - other) ** 2).mean()) + focal
    assert float(losses["loss"]) == pytest.approx(expected, rel=1e-5)
    probability = dsr_anomaly_map(logits)
    assert torch.allclose(probability, torch.sigmoid(logits[:, 1] - logits[:, 0]), atol=1e-6)
    # image score: the maximum of the 5x5 box-averaged map (zero padding counted), by brute force
    padded = F.pad(probability, (2, 2, 2, 2))
    brute = torch.stack(
        [torch.stack([padded[:, i : i + 5, j : j + 5].mean((1, 2)) for j in range(32)]) for i in range(32)]
    )
    assert torch.allclose(dsr_image_score(logits, 5), brute.flatten(0, 1).amax(0), atol=1e-6)


# ----------------------------------------------------------------------------- the anomaly generator
def test_perlin_masks_and_their_latent_grid():
    generator = DsrAnomalyGenerator(p_anomalous=1.0, seed=0)
    masks = generator.augment_batch(torch.zeros(6, 3, 32, 32))
    assert masks.shape == (6, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert all(m.sum() > 0 for m in masks)
    assert DsrAnomalyGenerator(p_anomalous=0.0).augment_batch(torch.zeros(3, 3, 32, 32)).sum() == 0
    half = DsrAnomalyGenerator(p_anomalous=0.5, seed=1).augment_batch(torch.zeros(200, 3, 8, 8))
    assert 70 < int((half.flatten(1).sum(1) > 0).sum()) < 130
    small = latent_mask(masks, (4, 4))  # a latent cell is anomalous if any pixel it covers is
    brute = np.array(
        [
            [[masks[b, 0, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].any() for j in range(4)] for i in range(4)]
            for b in range(6)
        ],
        dtype=np.float32,
    )
    assert np.array_equal(small[:, 0].numpy(), brute)


def test_replacement_codes_are_near_but_not_nearest_neighbours():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(400, 4, generator=g), torch.randn(40, 4, generator=g)
    picked = replacement_codes(z, codebook, strength=0.3, generator=g).numpy()
    distances = ((z.numpy()[:, None, :] - codebook.numpy()[None]) ** 2).sum(-1)  # (N, K) by brute force
    ranks = np.array([np.argsort(distances[n], kind="stable").tolist().index(picked[n]) for n in range(400)])
    skip, nearest = int(40 * 0.05), int(0.3 * 40) + 1  # 2 and 13
    assert ranks.min() >= skip and ranks.max() < nearest
    assert set(ranks.tolist()) == set(range(skip, nearest))  # every candidate can be drawn


def test_swapped_codes_and_modes_against_brute_force():
    torch.manual_seed(0)
    vq = GeneralAppearanceModel(**VQ_TINY).eval()
    images = torch.rand(8, 3, 64, 64)
    features = vq.encode(images)
    mask = DsrAnomalyGenerator(p_anomalous=1.0, seed=3).augment_batch(images)
    g = torch.Generator().manual_seed(5)
    out = quantized_anomalies(vq, features, mask, 0.2, g)
    mask_lo, mask_hi = latent_mask(mask, (8, 8)), latent_mask(mask, (16, 16))
    codebook_lo = vq.quantizer_lo.embedding
    for b, mode in enumerate(out["mode"].tolist()):
        lo, hi = out["quantized_lo"][b], out["quantized_hi"][b]
        if mode == 2:  # only hi: lo keeps its codes
            assert torch.equal(lo, features["quantized_lo"][b])
        else:  # lo swapped inside the mask only
            inside = mask_lo[b, 0].bool()
            assert torch.equal(lo[:, ~inside], features["quantized_lo"][b][:, ~inside])
            rows = lo[:, inside].t()  # each one a codebook row, not the own code
            matches = (rows[:, None, :] == codebook_lo[None]).all(-1)
            assert bool(matches.any(1).all())
            own = features["codes_lo"][b][inside]
            assert not bool(matches[torch.arange(len(own)), own].any())
        if mode == 1:
            assert torch.equal(hi, features["quantized_hi"][b])
        if mode == 2:
            inside = mask_hi[b, 0].bool()
            assert torch.equal(hi[:, ~inside], features["quantized_hi"][b][:, ~inside])
            assert not torch.equal(hi[:, inside], features["quantized_hi"][b][:, inside])
        grid, cell = (mask_hi[b, 0], 4) if mode == 2 else (mask_lo[b, 0], 8)
        expected = np.kron(grid.numpy(), np.ones((cell, cell)))  # block mask at image size
        assert np.array_equal(out["mask"][b, 0].numpy(), expected)
    assert set(out["mode"].tolist()) == {0, 1, 2}
    vq.train()  # generating anomalies never moves the codebooks
    codebooks = [vq.quantizer_lo.embedding.clone(), vq.quantizer_hi.embedding.clone()]
    quantized_anomalies(vq, features, mask, 0.2, g)
    assert torch.equal(codebooks[0], vq.quantizer_lo.embedding) and torch.equal(codebooks[1], vq.quantizer_hi.embedding)
    # swap_codes with an empty mask changes nothing
    same = swap_codes(
        features["z_lo"], features["quantized_lo"], codebook_lo, torch.zeros(8, 1, 8, 8), torch.full((8,), 0.5), g
    )
    assert torch.equal(same, features["quantized_lo"])


# ----------------------------------------------------------------------------- phases
def test_each_phase_trains_only_its_modules(tiny_natural_images):
    model = create("dsr", vq_finetune_epochs=1, max_epochs=10, **TINY)
    trainer = model.trainer(verbose=False, progress=False)
    phases = [("vq_finetune", 1), ("restriction", 7), ("upsampling", 3)]
    assert [(p.name, p.max_epochs) for p in trainer.phases] == phases
    assert [p.step for p in trainer.phases] == [model.vq_finetune_step, model.restriction_step, model.upsampling_step]
    trainer.setup()
    model.on_fit_start(None, trainer)
    assert model.natural is not None  # the fine-tuning's natural crops, made before the first batch
    batch = {"image": torch.randn(4, 3, 64, 64)}
    owners = {
        "vq_finetune": {"vq"},
        "restriction": {"restriction_hi", "restriction_lo", "object_decoder", "detection"},
        "upsampling": {"upsampling"},
    }
    for index, phase in enumerate(trainer.phases):
        if index:
            trainer.end_phase()
            trainer.begin_phase(phase)
        before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
        trainer.training_step(batch)
        changed = {
            k.split(".")[0]
            for k, v in model.state_dict().items()
            if torch.is_tensor(v) and not torch.equal(v, before[k])
        }
        assert changed == owners[phase.name], (phase.name, changed)
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for name in owners[phase.name] for p in getattr(model, name).parameters()}
    trainer.end_phase()
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- weights
def test_vq_weights_reference_layout_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    source = GeneralAppearanceModel(**VQ_TINY)
    # the reference's names (anomalib's DiscreteLatentModel), written out segment by segment
    names = {
        "encoder_hi": "_encoder_b",
        "encoder_lo": "_encoder_t",
        "decoder": "_decoder_b",
        "pre_quantize_lo": "_pre_vq_conv_top",
        "pre_quantize_hi": "_pre_vq_conv_bot",
        "upsample_lo": "upsample_t",
        "quantizer_lo": "_vq_vae_top",
        "quantizer_hi": "_vq_vae_bot",
        "residual": "_residual_stack",
        "layers": "_layers",
        "block": "_block",
        "deconv1": "_conv_trans_1",
        "deconv2": "_conv_trans_2",
        "conv1": "_conv_1",
        "conv2": "_conv_2",
        "conv3": "_conv_3",
        "embedding": "_embedding.weight",
        "cluster_size": "_ema_cluster_size",
        "embedding_sum": "_ema_w",
    }
    reference = {
        ".".join(names.get(part, part) for part in key.split(".")): value for key, value in source.state_dict().items()
    }
    assert "_encoder_b._residual_stack._layers.0._block.1.weight" in reference
    assert "_vq_vae_top._embedding.weight" in reference and "_vq_vae_bot._ema_w" in reference
    torch.save(reference, tmp_path / "official.pckl")
    target = GeneralAppearanceModel(**VQ_TINY)
    load_vq_weights(target, tmp_path / "official.pckl")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ValueError, match="num_embeddings=32, embedding_dim=8"):
        load_vq_weights(GeneralAppearanceModel(**{**VQ_TINY, "num_embeddings": 64}), tmp_path / "official.pckl")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not hold a DSR VQ model: missing keys"):
        load_vq_weights(target, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_vq_weights(target, tmp_path / "text.pt")
    model = create("dsr", max_epochs=2, **{**TINY, "vq_weights": str(tmp_path / "missing.pt")})
    with pytest.raises(FileNotFoundError, match="no VQ weights at"):
        model.fit(torch.randn(4, 3, 64, 64), verbose=False)


def test_train_vq_model_learns_on_the_loop_and_caches(tiny_natural_images, tmp_path, monkeypatch):
    from adlearn.train import Trainer

    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    calls = []
    step = Trainer.training_step
    monkeypatch.setattr(
        Trainer, "training_step", lambda self, batch: calls.append(self.model.name) or step(self, batch)
    )
    path, model = train_vq_model(32, **VQ_TINY, steps=40, batch_size=4, epochs=4, verbose=False, return_model=True)
    assert calls == ["dsr_vq"] * 40  # every batch through the shared loop
    assert path == vq_cache_path((32, 32), 16, 2, 8, 32, 8, 40, 0, batch_size=4, epochs=4) and path.is_file()
    assert str(path).startswith(str(tmp_path / "dsr")) and path.name.startswith("vq-v2_")
    assert not list(path.parent.glob("*.checkpoint.pt"))  # the loop's checkpoint is gone once the file is written
    loaded = GeneralAppearanceModel(**VQ_TINY)
    load_vq_weights(loaded, path)  # the round trip is exact, EMA buffers included
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    again = train_vq_model(32, **VQ_TINY, steps=40, batch_size=4, epochs=4, verbose=False)
    assert again == path and len(calls) == 40  # the second call reads the file, no training step
    from adlearn.data.natural_images import NaturalImageCrops

    crops = NaturalImageCrops(32, seed=9, normalize=False).sample(8)
    untrained = GeneralAppearanceModel(**VQ_TINY).eval()
    with torch.no_grad():
        error = F.mse_loss(model(crops), crops)
        assert error < 0.5 * F.mse_loss(untrained(crops), crops)
    codes = model.encode(crops)["codes_hi"].unique()
    assert len(codes) > 4  # the codebook is used, not collapsed to a code or two


def test_train_vq_model_leaves_the_callers_random_state_alone(tiny_natural_images, tmp_path, monkeypatch):
    """A cache miss (training) and a cache hit (reading) must leave the same global RNG state behind: else
    the same seed gives other scores on a machine whose cache is empty (a real bottle run did)."""
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)  # the stream with no VQ work in between
    torch.manual_seed(123)
    train_vq_model(32, **VQ_TINY, steps=3, batch_size=2, verbose=False)  # miss: trains and caches
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    train_vq_model(32, **VQ_TINY, steps=3, batch_size=2, verbose=False)  # hit: reads the file
    assert torch.equal(torch.rand(3), expected)
    # Still seeded inside: the same weights whatever the caller's state was.
    torch.manual_seed(7)
    _, first = train_vq_model(32, **VQ_TINY, steps=3, batch_size=2, verbose=False, return_model=True, cache=False)
    torch.manual_seed(8)
    _, second = train_vq_model(32, **VQ_TINY, steps=3, batch_size=2, verbose=False, return_model=True, cache=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


# ----------------------------------------------------------------------------- the model
def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="divisible by 32, got 48x48"):
        create("dsr", **{**TINY, "image_size": 48})
    with pytest.raises(ValueError, match="upsampling_train_ratio"):
        create("dsr", upsampling_train_ratio=1.0, **TINY)
    with pytest.raises(ValueError, match="max_epochs >= 2"):
        create("dsr", max_epochs=1, **TINY).training_phases()
    with pytest.raises(ValueError, match="vq_weights must be"):
        create("dsr", **{**TINY, "vq_weights": None})
    with pytest.raises(ValueError, match="vq_finetune_epochs must be an int >= 0"):
        create("dsr", vq_finetune_epochs=-1, **TINY)
    # files saved before the option's rename load (adlearn.load calls the class): vq_epochs is read as vq_finetune_epochs
    from adlearn.models.dsr import Dsr

    assert Dsr(vq_epochs=3, **TINY).config["vq_finetune_epochs"] == 3


def test_defaults_are_the_reference(monkeypatch):
    import inspect

    from adlearn.models.dsr import Dsr

    defaults = {k: p.default for k, p in inspect.signature(Dsr.__init__).parameters.items() if k != "self"}
    assert (defaults["num_hiddens"], defaults["num_residual_layers"], defaults["num_residual_hiddens"]) == (128, 2, 64)
    assert (defaults["num_embeddings"], defaults["embedding_dim"], defaults["latent_anomaly_strength"]) == (
        4096,
        128,
        0.2,
    )
    assert (defaults["upsampling_train_ratio"], defaults["lr"], defaults["batch_size"]) == (0.7, 2e-4, 8)
    assert Dsr.training_defaults["max_epochs"] == 700
    # the paper: the VQ model pretrained on natural images only and frozen; fine-tuning is an option, off
    assert defaults["vq_finetune_epochs"] == 0 and "vq_finetune_epochs" not in Dsr.preset("paper")
    model = Dsr(image_size=64, device="cpu", vq_weights="none")
    assert [(p.name, p.max_epochs) for p in model.training_phases()] == [("restriction", 490), ("upsampling", 210)]
    assert model.restriction_optimizer(490)[1].step_size == 392 and model.score_window == 5
    assert Dsr(image_size=256, device="cpu").score_window == 21
    assert Dsr.preset("cpu")["image_size"] == 128


def test_tiny_fit_trains_both_phases_with_the_appearance_model_frozen(datasets_64):
    # Save/load and same-seed scores: tests/test_model_contract.py.
    train, test = datasets_64
    images = torch.stack([test[i]["image"] for i in range(4)])
    first = create("dsr", max_epochs=2, **TINY)
    vq = {k: v.clone() for k, v in first.vq.state_dict().items()}
    first.fit(train, verbose=False)
    assert first.history.phase == ["restriction", "upsampling"]
    # the general appearance model stays frozen through phases 2-3: weights and EMA codebooks unchanged
    assert all(torch.equal(v, vq[k]) for k, v in first.vq.state_dict().items())
    assert {"features_hi", "features_lo", "image", "focal", "focal_upsampling"} <= set(first.history.losses)
    prediction = first.predict(images)
    assert prediction.anomaly_map.shape == (4, 64, 64) and prediction.pred_score.shape == (4,)
    assert 0 <= float(prediction.anomaly_map.min()) and float(prediction.anomaly_map.max()) <= 1


def test_adlearn_evaluate_dsr_rejects_bad_sizes():
    from adlearn.cli import main

    assert main(["evaluate", "dsr", "--image-size", "48", "--device", "cpu"]) == 2  # a clear error, no traceback
