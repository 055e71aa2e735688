"""Backbones: offline ImageNet weights, pretrained modes, layer mapping, feature extractors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adlearn.components import (
    BackboneParams,
    TimmFeatureExtractor,
    TorchFXFeatureExtractor,
    dryrun_find_featuremap_dims,
)
from adlearn.components.feature_extractors import PretrainedWeightsError, load_backbone, resolve_pretrained
from adlearn.components.feature_extractors.backbones import offline_weights_path

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _imagenet_batch(array: np.ndarray) -> torch.Tensor:
    image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    image = F.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    return (image - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def lite0_classifier():
    return load_backbone("efficientnet_lite0", "auto").eval()


@pytest.mark.parametrize("name, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_offline_weights_classify_real_photos(lite0_classifier, name, classes):
    from skimage import data

    with torch.no_grad():
        logits = lite0_classifier(_imagenet_batch(getattr(data, name)()))
    assert int(logits.argmax()) in classes


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_offline_backbones_classify_real_photos(backbone):
    # FastFlow's real-bottle recipe uses lite2: its positional mapping must hold too (wider stages, more blocks).
    from skimage import data

    classifier = load_backbone(backbone, "auto").eval()
    with torch.no_grad():
        cat = int(classifier(_imagenet_batch(data.chelsea())).argmax())
        espresso = int(classifier(_imagenet_batch(data.coffee())).argmax())
    assert cat in range(281, 286) and espresso == 967


def test_random_weights_do_not_classify(lite0_classifier):
    # The test above can fail: a randomly initialised network does not find the cat.
    from skimage import data

    torch.manual_seed(0)
    random_model = load_backbone("efficientnet_lite0", "none").eval()
    with torch.no_grad():
        assert int(random_model(_imagenet_batch(data.chelsea())).argmax()) not in range(281, 286)


def test_auto_resolves_to_packaged_file_and_hub_otherwise():
    assert resolve_pretrained("efficientnet_lite0", "auto") == offline_weights_path("efficientnet_lite0")
    assert resolve_pretrained("resnet18", "auto") == "hub"
    assert resolve_pretrained("resnet18", False) == "none"


def test_weights_from_a_local_file_match_the_package(tmp_path, lite0_classifier):
    path = tmp_path / "lite0.pth"
    torch.save(lite0_classifier.state_dict(), path)  # timm naming this time
    from_file = load_backbone("efficientnet_lite0", str(path), features_only=True, out_indices=[1])
    from_package = load_backbone("efficientnet_lite0", "auto", features_only=True, out_indices=[1])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_file.eval()(x)[0], from_package.eval()(x)[0])


def test_bad_pretrained_values_name_the_alternatives(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="pretrained='none'"):
        resolve_pretrained("resnet18", str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read weights file"):
        load_backbone("resnet18", str(corrupt))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(PretrainedWeightsError, match="does not fit resnet18"):
        load_backbone("resnet18", str(wrong))


def test_failed_hub_download_is_a_clear_error():
    # In a subprocess with the hub forced offline, so it fails at once (no network here anyway).
    code = (
        "from adlearn.components.feature_extractors import load_backbone\n"
        "try:\n    load_backbone('resnet18', 'hub')\n"
        "except Exception as e:\n    print(type(e).__name__, '|', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("PretrainedWeightsError")
    assert "resnet18" in out and "pretrained='none'" in out and "efficientnet_lite0" in out


def test_timm_extractor_shapes_and_layer_mapping():
    extractor = TimmFeatureExtractor("efficientnet_lite0", ["layer1", "layer2", "layer3"], pre_trained="auto")
    assert extractor.stage_names == ["blocks.1", "blocks.2", "blocks.4"]
    assert extractor.out_dims == [24, 40, 112]
    features = extractor(torch.rand(2, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "layer1": (2, 24, 32, 32),
        "layer2": (2, 40, 16, 16),
        "layer3": (2, 112, 8, 8),
    }
    dims = dryrun_find_featuremap_dims(extractor, (128, 128), extractor.layers)
    assert dims["layer3"] == {"num_features": 112, "resolution": (8, 8)}
    assert not any(p.requires_grad for p in extractor.parameters())


def test_resnet18_documented_shapes_without_weights():
    # MODELS.md A.1.2: resnet18 layers 1-3 at 256 px -> 64x64, 32x32, 16x16.
    extractor = TimmFeatureExtractor("resnet18", ["layer1", "layer2", "layer3"], pre_trained=False)
    shapes = {k: tuple(v.shape) for k, v in extractor(torch.rand(1, 3, 256, 256)).items()}
    assert shapes == {"layer1": (1, 64, 64, 64), "layer2": (1, 128, 32, 32), "layer3": (1, 256, 16, 16)}


def test_unknown_layer_lists_the_real_ones():
    with pytest.raises(ValueError, match="blocks.1"):
        TimmFeatureExtractor("efficientnet_lite0", ["layer9"], pre_trained=False)


def test_frozen_extractor_stays_in_eval_mode():
    extractor = TimmFeatureExtractor("efficientnet_lite0", ["layer2"], pre_trained="auto")
    extractor.train()
    assert not extractor.feature_extractor.training
    trainable = TimmFeatureExtractor("efficientnet_lite0", ["layer2"], pre_trained="none", requires_grad=True)
    out = trainable(torch.rand(1, 3, 64, 64))["layer2"]
    assert out.requires_grad


def test_torchfx_extractor_matches_module_outputs():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    extractor = TorchFXFeatureExtractor(model, ["layer1", "layer3"])
    x = torch.rand(2, 3, 64, 64)
    features = extractor(x)
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer1 = model.layer1(h)
        layer3 = model.layer3(model.layer2(layer1))
    torch.testing.assert_close(features["layer1"], layer1)
    torch.testing.assert_close(features["layer3"], layer3)
    by_name = TorchFXFeatureExtractor(BackboneParams("resnet18"), ["layer2"])
    assert tuple(by_name(x)["layer2"].shape) == (2, 128, 8, 8)
    with pytest.raises(TypeError):
        TorchFXFeatureExtractor(42, ["layer1"])


# ----------------------------------------------------------------------------- batch-norm folding
def _randomize_batch_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics and affine parameters, so a wrong fold cannot hide behind BN ≈ identity."""
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            for tensor, low, high in (
                (norm.running_mean, -1, 1),
                (norm.running_var, 0.5, 2),
                (norm.weight.data, 0.5, 1.5),
                (norm.bias.data, -1, 1),
            ):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


@pytest.mark.parametrize(
    "backbone, layers", [("efficientnet_lite0", ["layer2", "layer3"]), ("resnet18", ["layer1", "layer2", "layer3"])]
)
def test_folding_batch_norms_keeps_the_features(backbone, layers):
    from adlearn.components import fold_batch_norms

    extractor = TimmFeatureExtractor(backbone, layers, pre_trained="none", fold_batch_norm=False)
    _randomize_batch_norms(extractor)
    n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    folded, count = fold_batch_norms(extractor.feature_extractor, torch.rand(2, 3, 64, 64))
    assert count == n_norms > 0  # every conv -> BN pair
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    images = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = extractor.feature_extractor(images)
        for before, after in zip(expected, folded(images)):
            torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    # the activation a timm BatchNormAct2d carries survives the fold (lite0: ReLU6 after each BN)
    if backbone == "efficientnet_lite0":
        assert sum(isinstance(m, torch.nn.ReLU6) for m in folded.modules()) == sum(
            isinstance(m, torch.nn.ReLU6) for m in extractor.modules()
        )


def test_folding_is_on_for_frozen_extractors_only():
    frozen = TimmFeatureExtractor("efficientnet_lite0", ["layer2"], pre_trained="none")
    trainable = TimmFeatureExtractor("efficientnet_lite0", ["layer2"], pre_trained="none", requires_grad=True)
    assert frozen.folded_batch_norms > 0 and trainable.folded_batch_norms == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.modules())


def test_folding_leaves_a_model_alone_when_a_conv_output_is_used_elsewhere():
    from adlearn.components import fold_batch_norms

    class SkipFromConvOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y  # y also used outside the BN

    model = SkipFromConvOutput().eval().requires_grad_(False)
    _randomize_batch_norms(model)
    same, count = fold_batch_norms(model, torch.rand(2, 3, 8, 8))
    assert same is model and count == 0
    with pytest.raises(ValueError, match="frozen"):
        fold_batch_norms(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)), torch.rand(1, 3, 4, 4))
