"""`TransformerFeatureExtractor` on small random-weight timm transformers (offline), against timm's own
``forward_intermediates`` / ``forward_features`` paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adlearn.components import TimmFeatureExtractor, TransformerFeatureExtractor, is_transformer
from adlearn.components.feature_extractors.transformer import _check_timm_layout, default_transformer_layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

SMALL = ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "cait_xxs24_224"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backbone", SMALL)
def test_blocks_match_timms_forward_intermediates(backbone, images):
    torch.manual_seed(0)
    extractor = TransformerFeatureExtractor(backbone, layers=["blocks.5", "blocks.2"], pre_trained="none")
    features = extractor(images)
    assert list(features) == ["blocks.5", "blocks.2"]  # the order asked for, like TimmFeatureExtractor
    assert extractor.n_blocks == 6 and extractor.out_dims == [192, 192] and extractor.strides == [16, 16]
    with torch.no_grad():
        expected = extractor.model.forward_intermediates(
            images, indices=[2, 5], norm=True, output_fmt="NCHW", intermediates_only=True
        )
    for layer, reference in zip(["blocks.2", "blocks.5"], expected):
        assert features[layer].shape == (2, 192, 14, 14)
        torch.testing.assert_close(features[layer], reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["deit_tiny_distilled_patch16_224", "cait_xxs24_224"])
def test_last_block_is_timms_normalised_patch_tokens(backbone, images):
    """After every block, the map is ``forward_features`` without the class (and distillation) tokens:
    CaiT's class-attention blocks change only its class token."""
    extractor = TransformerFeatureExtractor(
        backbone, layers="blocks.11" if "deit" in backbone else "blocks.23", pre_trained="none"
    )
    (feature,) = extractor(images[:1]).values()
    with torch.no_grad():
        tokens = extractor.model.forward_features(images[:1])  # (1, n_prefix + 196, 192)
    patches = tokens[:, tokens.shape[1] - 196 :]
    torch.testing.assert_close(feature, patches.transpose(1, 2).reshape(1, 192, 14, 14), rtol=1e-5, atol=1e-5)
    # position (i, j) of the map is patch i·14 + j: row-major, like the image
    torch.testing.assert_close(feature[0, :, 3, 5], patches[0, 3 * 14 + 5], rtol=1e-5, atol=1e-5)


def test_default_block_is_fastflows_choice():
    assert default_transformer_layer("cait_m48_448", 48) == "blocks.40"
    assert default_transformer_layer("deit_base_distilled_patch16_384", 12) == "blocks.7"
    assert default_transformer_layer("deit_tiny_patch16_224", 12) == "blocks.7"  # 8/12 of the depth
    assert default_transformer_layer("cait_xxs24_224", 24) == f"blocks.{round(24 * 41 / 48) - 1}"
    extractor = TransformerFeatureExtractor("deit_tiny_patch16_224", pre_trained="none")
    assert extractor.layers == ["blocks.7"] and extractor.n_blocks == 8 and extractor.image_size == (224, 224)


def test_frozen_and_always_in_eval_mode(images):
    extractor = TransformerFeatureExtractor("deit_tiny_patch16_224", layers="blocks.1", pre_trained="none")
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.model.training and not any(m.training for m in extractor.model.modules())
    first = extractor(images)["blocks.1"]
    assert not first.requires_grad
    torch.testing.assert_close(extractor(images)["blocks.1"], first, rtol=0, atol=0)  # no dropout


def test_same_dict_as_the_cnn_extractor(images):
    cnn = TimmFeatureExtractor("efficientnet_lite0", ["layer3"], pre_trained="none")
    vit = TransformerFeatureExtractor("deit_tiny_patch16_224", layers="blocks.0", pre_trained="none")
    for extractor in (cnn, vit):
        features = extractor(images[:1])
        assert isinstance(features, dict) and list(features) == extractor.layers
        (feature,) = features.values()
        assert feature.ndim == 4 and feature.shape[1] == extractor.out_dims[0]
        assert feature.shape[-1] == 224 // extractor.strides[0]


def test_bad_inputs_are_named():
    assert is_transformer("cait_m48_448") and is_transformer("deit_small_patch16_224")
    assert not is_transformer("resnet18")
    with pytest.raises(ValueError, match="TimmFeatureExtractor"):
        TransformerFeatureExtractor("resnet18", pre_trained="none")
    with pytest.raises(ValueError, match="'blocks.0' … 'blocks.11'"):
        TransformerFeatureExtractor("deit_tiny_patch16_224", layers="blocks.12", pre_trained="none")
    with pytest.raises(ValueError, match="not a block"):
        TransformerFeatureExtractor("deit_tiny_patch16_224", layers="layer3", pre_trained="none")
    with pytest.raises(TypeError, match="lacks patch_embed, blocks, norm, embed_dim, pos_embed"):
        _check_timm_layout(nn.Linear(2, 2), "something")
