"""`TimmFeatureExtractor`: a pretrained timm CNN cut into feature stages
(reference: ``anomalib.models.components.feature_extractors.TimmFeatureExtractor``).

    extractor = TimmFeatureExtractor("efficientnet_lite0", layers=["blocks.1", "blocks.2"])
    features = extractor(images)   # {"blocks.1": (B, 24, H/4, W/4), "blocks.2": (B, 40, H/8, W/8)}

``pre_trained`` takes ``True`` (= ``"auto"``), ``False`` (= ``"none"``), ``"auto"``, ``"hub"``,
``"none"`` or a weights path (see `backbones`). With ``requires_grad=False`` the backbone is frozen
and always runs in eval mode (batch-norm statistics stay the ImageNet ones).

Speed only: with ``channels_last=True`` (default) the backbone's weights and the images it gets are
kept in the "channels last" memory layout, in which oneDNN's CPU convolutions run faster
(cuDNN likes it too under mixed precision; timings: docs/benchmarks.md). The numbers are the same
up to rounding; the feature maps come back in the standard layout, so nothing downstream sees a
difference. A frozen
backbone also has its batch norms folded into the convolutions before them (`fold_batch_norms`:
less time on a CPU, same numbers up to rounding); ``fold_batch_norm=False`` keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adlearn.components.feature_extractors.backbones import load_backbone, resolve_layers
from adlearn.components.feature_extractors.fold import fold_batch_norms


class TimmFeatureExtractor(nn.Module):
    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        pre_trained=True,
        requires_grad: bool = False,
        channels_last: bool = True,
        fold_batch_norm: bool = True,
    ):
        super().__init__()
        import timm

        if isinstance(layers, str):
            layers = [layers]
        self.backbone = backbone
        self.layers = list(layers)
        self.requires_grad = requires_grad
        # A weightless throw-away model tells which stages exist, their names and strides.
        probe = timm.create_model(backbone, pretrained=False, features_only=True)
        stage_names = resolve_layers(probe.feature_info, self.layers)
        self.stage_names = stage_names
        all_names = list(probe.feature_info.module_name())
        out_indices = sorted({all_names.index(name) for name in stage_names})
        self.feature_extractor = load_backbone(backbone, pre_trained, features_only=True, out_indices=out_indices)
        channels = dict(
            zip(self.feature_extractor.feature_info.module_name(), self.feature_extractor.feature_info.channels())
        )
        reductions = dict(
            zip(self.feature_extractor.feature_info.module_name(), self.feature_extractor.feature_info.reduction())
        )
        self.out_dims = [channels[name] for name in stage_names]
        self.strides = [reductions[name] for name in stage_names]
        self._output_order = [list(channels).index(name) for name in stage_names]
        if not requires_grad:
            self.feature_extractor.eval()
            self.feature_extractor.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            self.feature_extractor.to(memory_format=torch.channels_last)
        self.folded_batch_norms = 0
        if fold_batch_norm and not requires_grad:
            # Drawn from the current generator, as a layer's initialisation is: inside a model that is the
            # model's own seeded stream (AnomalyModel), so the weights built after it repeat the same draws.
            example = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
            self.feature_extractor, self.folded_batch_norms = fold_batch_norms(self.feature_extractor, example)

    def train(self, mode: bool = True):
        # A frozen backbone keeps its ImageNet batch-norm statistics, whatever the parent does.
        super().train(mode)
        if not self.requires_grad:
            self.feature_extractor.eval()
        return self

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:  # (B, 3, H, W)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)  # speed only, see the docstring
        if self.requires_grad:
            outputs = self.feature_extractor(inputs)
        else:
            with torch.no_grad():
                outputs = self.feature_extractor(inputs)
        return {layer: outputs[index].contiguous() for layer, index in zip(self.layers, self._output_order)}


def dryrun_find_featuremap_dims(
    feature_extractor: nn.Module, input_size: tuple[int, int], layers: Sequence[str]
) -> dict[str, dict]:
    """Channels and resolution of each layer, found by pushing one blank image through.

    (The reference documents a ``tuple`` return type; it returns this mapping — as we do.)
    """
    device = next(feature_extractor.parameters()).device
    with torch.no_grad():
        features = feature_extractor(torch.zeros(1, 3, *input_size, device=device))
    return {
        layer: {"num_features": features[layer].shape[1], "resolution": tuple(features[layer].shape[2:])}
        for layer in layers
    }
