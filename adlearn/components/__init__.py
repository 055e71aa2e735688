"""Reusable building blocks, named as anomalib documents them (``anomalib.models.components``).

Components know nothing of models. Names are resolved lazily so ``import adlearn.components``
stays cheap; ``from adlearn.components import PCA`` works as usual.
"""

from __future__ import annotations

from adlearn._lazy import lazy_exports

_LAZY = {
    # feature extractors (anomalib: components.feature_extractors)
    "BackboneParams": "feature_extractors",
    "TimmFeatureExtractor": "feature_extractors",
    "fold_batch_norms": "feature_extractors",
    "TorchFXFeatureExtractor": "feature_extractors",
    "TransformerFeatureExtractor": "feature_extractors",
    "is_transformer": "feature_extractors",
    "dryrun_find_featuremap_dims": "feature_extractors",
    # dimensionality reduction (components.dimensionality_reduction)
    "PCA": "pca",
    "SparseRandomProjection": "random_projection",
    # normalizing flows (components.flow)
    "AllInOneBlock": "flow",
    "SequenceFlow": "flow",
    "FlowSequence": "flow",
    "subnet_conv": "flow",
    "subnet_fc": "flow",
    "positional_encoding_2d": "positional_encoding",
    "CrossScaleFlow": "cross_scale_flow",
    "CrossScaleCoupling": "cross_scale_flow",
    "CrossConvolutions": "cross_scale_flow",
    "ParallelPermute": "cross_scale_flow",
    # a-contrario detection (U-Flow)
    "log_nfa": "nfa",
    "nfa_segmentation": "nfa",
    # sampling (components.sampling)
    "KCenterGreedy": "kcenter_greedy",
    "coverage_radius": "kcenter_greedy",
    # filters (components.filters)
    "GaussianBlur2d": "blur",
    # classification (components.classification)
    "FeatureScalingMethod": "kde_classifier",
    "KDEClassifier": "kde_classifier",
    # cluster (components.cluster)
    "GaussianMixture": "gmm",
    "KMeans": "kmeans",
    # statistics (components.stats)
    "GaussianKDE": "gaussian_kde",
    "MultiVariateGaussian": "multivariate_gaussian",
    "SingleClassGaussian": "single_class_gaussian",
    # base classes (components.base)
    "DynamicBufferMixin": "dynamic_buffer",
    "NotFittedError": "dynamic_buffer",
    # convolutional blocks (trained encoders and decoders)
    "BasicBlock": "blocks",
    "conv_bn_relu": "blocks",
    "residual_stage": "blocks",
    "double_conv": "blocks",
    "up_conv": "blocks",
    "UNet": "blocks",
    # losses (SSIM, focal) and DRÆM's optional SSPCAB block
    "ssim": "losses",
    "ssim_map": "losses",
    "ssim_loss": "losses",
    "focal_loss": "losses",
    "SSPCAB": "sspcab",
    # vector quantisation (VQ-VAE, DSR)
    "VectorQuantizerEMA": "vector_quantizer",
    # per-channel statistics of feature maps (EfficientAD's teacher, CS-Flow's standardisation)
    "ChannelStatistics": "channel_statistics",
    # EfficientAD's patch description network (its teacher and student)
    "PatchDescriptionNetwork": "pdn",
    # nearest-neighbour search (used by memory-bank models)
    "NearestNeighbors": "nearest_neighbors",
    # sliding windows over a patch grid and their harmonic aggregation (WinCLIP)
    "window_masks": "windows",
    "window_counts": "windows",
    "window_tokens": "windows",
    "pool_windows": "windows",
    "harmonic_aggregation": "windows",
    "harmonic_mean": "windows",
    # CLIP's compositional prompt ensemble and two-class score (WinCLIP)
    "prompt_ensemble": "clip_prompts",
    "text_embeddings": "clip_prompts",
    "class_scores": "clip_prompts",
    # tiling: overlapping tiles of a high-resolution image, and stitching them back (data.utils.tiler)
    "Tiler": "tiler",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
