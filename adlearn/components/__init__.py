"""Reusable building blocks, named as anomalib's reference documents them (MODELS.md, part A).

Components know nothing of models. Names are resolved lazily so ``import adlearn.components``
stays cheap; ``from adlearn.components import PCA`` works as usual.
"""

from __future__ import annotations

import importlib

_LAZY = {
    # feature extractors (A.1)
    "BackboneParams": "feature_extractors",
    "TimmFeatureExtractor": "feature_extractors",
    "fold_batch_norms": "feature_extractors",
    "TorchFXFeatureExtractor": "feature_extractors",
    "TransformerFeatureExtractor": "feature_extractors",
    "is_transformer": "feature_extractors",
    "dryrun_find_featuremap_dims": "feature_extractors",
    # dimensionality reduction (A.2)
    "PCA": "pca",
    "SparseRandomProjection": "random_projection",
    # normalizing flows (A.3)
    "AllInOneBlock": "flow",
    "SequenceFlow": "flow",
    "FlowSequence": "flow",
    "subnet_conv": "flow",
    "subnet_fc": "flow",
    # sampling (A.4)
    "KCenterGreedy": "kcenter_greedy",
    "coverage_radius": "kcenter_greedy",
    # filters (A.5)
    "GaussianBlur2d": "blur",
    # classification (A.6)
    "FeatureScalingMethod": "kde_classifier",
    "KDEClassifier": "kde_classifier",
    # cluster (A.7)
    "GaussianMixture": "gmm",
    "KMeans": "kmeans",
    # statistics (A.8)
    "GaussianKDE": "gaussian_kde",
    "MultiVariateGaussian": "multivariate_gaussian",
    "SingleClassGaussian": "single_class_gaussian",
    # base classes (A.9)
    "DynamicBufferMixin": "dynamic_buffer",
    "NotFittedError": "dynamic_buffer",
    # convolutional blocks (trained encoders and decoders)
    "BasicBlock": "blocks",
    "conv_bn_relu": "blocks",
    "residual_stage": "blocks",
    # nearest-neighbour search (used by memory-bank models)
    "NearestNeighbors": "nearest_neighbors",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"adlearn.components.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'adlearn.components' has no attribute {name!r}")


def __dir__():
    return sorted(_LAZY)


__all__ = sorted(_LAZY)
