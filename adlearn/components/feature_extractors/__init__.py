"""Feature extractors: pretrained networks whose intermediate maps feed every model
(reference: ``anomalib.models.components.feature_extractors``).

- `TimmFeatureExtractor` — a timm CNN returning ``{layer: feature map}``.
- `TransformerFeatureExtractor` / `is_transformer` — a timm CaiT / DeiT returning the same kind of dict.
- `TorchFXFeatureExtractor` / `BackboneParams` — any torchvision/custom model, cut at graph nodes.
- `dryrun_find_featuremap_dims` — push one blank image through to learn channels and resolution.
- `load_backbone` / `resolve_pretrained` — where the weights come from (offline package, hub, file).
- `fold_batch_norms` — merge a frozen backbone's batch norms into its convolutions (speed only).
"""

from adlearn.components.feature_extractors.backbones import (
    OFFLINE_WEIGHTS,
    PretrainedWeightsError,
    load_backbone,
    resolve_layers,
    resolve_pretrained,
)
from adlearn.components.feature_extractors.fold import fold_batch_norms
from adlearn.components.feature_extractors.timm import TimmFeatureExtractor, dryrun_find_featuremap_dims
from adlearn.components.feature_extractors.torchfx import BackboneParams, TorchFXFeatureExtractor
from adlearn.components.feature_extractors.transformer import TransformerFeatureExtractor, is_transformer

__all__ = [
    "OFFLINE_WEIGHTS",
    "BackboneParams",
    "PretrainedWeightsError",
    "TimmFeatureExtractor",
    "TorchFXFeatureExtractor",
    "TransformerFeatureExtractor",
    "dryrun_find_featuremap_dims",
    "fold_batch_norms",
    "is_transformer",
    "load_backbone",
    "resolve_layers",
    "resolve_pretrained",
]
