"""`TorchFXFeatureExtractor` and `BackboneParams`
(reference: ``anomalib.models.components.feature_extractors``).

Any model — a torchvision name, a ``"package.module.Class"`` path, a class or an instance — cut at
named graph nodes with ``torch.fx``. Find node names with
``torchvision.models.feature_extraction.get_graph_node_names(model)``.

    extractor = TorchFXFeatureExtractor("efficientnet_b5", ["features.6.8"],
                                        weights=EfficientNet_B5_Weights.DEFAULT)
    extractor(torch.rand(32, 3, 256, 256))["features.6.8"].shape   # (32, 304, 8, 8)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class BackboneParams:
    """Which backbone to build: a class path (or class) and its constructor arguments."""

    class_path: str | type[nn.Module]
    init_args: dict = field(default_factory=dict)


def _resolve_class(class_path: str | type[nn.Module]):
    if not isinstance(class_path, str):
        return class_path, False
    if "." not in class_path:  # a bare name is a torchvision model
        import torchvision.models

        if not hasattr(torchvision.models, class_path):
            raise ValueError(f"torchvision.models has no model named {class_path!r}")
        return getattr(torchvision.models, class_path), True
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name), False


class TorchFXFeatureExtractor(nn.Module):
    def __init__(
        self,
        backbone: str | BackboneParams | dict | nn.Module,
        return_nodes: Sequence[str],
        weights=None,
        requires_grad: bool = False,
        tracer_kwargs: dict | None = None,
    ):
        super().__init__()
        if isinstance(backbone, dict):
            backbone = BackboneParams(**backbone)
        elif isinstance(backbone, str):
            backbone = BackboneParams(class_path=backbone)
        elif not isinstance(backbone, (BackboneParams, nn.Module)):
            raise TypeError(f"backbone must be a name, BackboneParams, dict or nn.Module, got {type(backbone)}")
        self.return_nodes = list(return_nodes)
        self.requires_grad = requires_grad
        self.feature_extractor = self.initialize_feature_extractor(
            backbone, self.return_nodes, weights, requires_grad, tracer_kwargs
        )

    @staticmethod
    def initialize_feature_extractor(backbone, return_nodes, weights=None, requires_grad=False, tracer_kwargs=None):
        from torchvision.models.feature_extraction import create_feature_extractor

        if isinstance(backbone, nn.Module):
            model = backbone
        else:
            cls, is_torchvision = _resolve_class(backbone.class_path)
            if is_torchvision:
                model = cls(weights=None if isinstance(weights, (str, Path)) else weights, **backbone.init_args)
            else:
                model = cls(**backbone.init_args)
        if isinstance(weights, (str, Path)):
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
        extractor = create_feature_extractor(model, list(return_nodes), tracer_kwargs=tracer_kwargs)
        if not requires_grad:
            extractor.eval()
            extractor.requires_grad_(False)
        return extractor

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.requires_grad:
            return dict(self.feature_extractor(inputs))
        with torch.no_grad():
            return dict(self.feature_extractor(inputs))
