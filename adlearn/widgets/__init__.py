"""Interactive views for the course notebooks (top layer: nothing below imports this package).

Every widget comes in three pieces (see `adlearn.widgets.view`):

* a pure compute function returning plain numbers / arrays — ``pca_explore``, ``kde_explore``,
  ``coreset_explore`` (+ ``coverage_curve``), ``flow_explore``, ``mixture_explore``,
  ``padim_maps_explore``, ``nfa_explore``;
* a live ipywidgets view for JupyterLab — ``pca_widget``, ``kde_widget``, ``coreset_widget``,
  ``flow_widget``, ``mixture_widget``, ``padim_maps_widget``, ``nfa_widget`` — returning a
  `WidgetView` (``.controls``, ``.output``, ``.last_result``, ``.figure``);
* a static small-multiples figure of a parameter sweep, which the book shows in place of the
  live view — ``pca_static_figure``, ``kde_static_figure``, ``coreset_static_figure``,
  ``flow_static_figure``, ``mixture_static_figure``, ``padim_maps_static_figure``,
  ``nfa_static_figure``.

The PaDiM and U-Flow views run the model's slow part once (`PadimFeatures`: the backbone;
`UflowOutputs`: the backbone and the flow) and recompute only the cheap steps on a change.

Names resolve lazily and ipywidgets / matplotlib are imported only when a view or figure is
built, so ``import adlearn.widgets`` is cheap.
"""

from __future__ import annotations

from adlearn._lazy import lazy_exports

_LAZY = {
    # the shared view and helpers
    "WidgetView": "view",
    "project_features": "common",
    # PCA / DFM's reconstruction error
    "pca_explore": "pca",
    "pca_widget": "pca",
    "pca_static_figure": "pca",
    "pca_reconstruction_error": "pca",
    # Gaussian KDE
    "ScaledGaussianKDE": "kde",
    "kde_explore": "kde",
    "kde_widget": "kde",
    "kde_static_figure": "kde",
    # coresets
    "coreset_explore": "coreset",
    "coverage_curve": "coreset",
    "kcenter_indices": "coreset",
    "random_indices": "coreset",
    "coreset_widget": "coreset",
    "coreset_static_figure": "coreset",
    # normalizing flows
    "make_toy_data": "flow",
    "make_outliers": "flow",
    "build_toy_flow": "flow",
    "train_toy_flow": "flow",
    "flow_log_likelihood": "flow",
    "flow_explore": "flow",
    "flow_widget": "flow",
    "flow_static_figure": "flow",
    # conditional flows (C-Flow's idea)
    "make_conditional_toy_data": "conditional_flow",
    "train_conditional_toy_flow": "conditional_flow",
    "conditional_log_likelihood": "conditional_flow",
    "conditional_flow_explore": "conditional_flow",
    "conditional_flow_widget": "conditional_flow",
    "conditional_flow_static_figure": "conditional_flow",
    # Gaussians, mixtures and k-means: K and the covariance regularisation
    "make_mixture_toy": "mixture",
    "mahalanobis_to_components": "mixture",
    "mixture_explore": "mixture",
    "mixture_widget": "mixture",
    "mixture_static_figure": "mixture",
    # PaDiM's maps: random channels d and blur σ
    "PadimFeatures": "padim_maps",
    "padim_maps_explore": "padim_maps",
    "padim_maps_widget": "padim_maps",
    "padim_maps_static_figure": "padim_maps",
    # U-Flow's a-contrario mask: the NFA threshold ε
    "UflowOutputs": "nfa",
    "nfa_explore": "nfa",
    "nfa_widget": "nfa",
    "nfa_static_figure": "nfa",
    # the defect playground (ipycanvas)
    "DefectPlayground": "playground",
    "paint": "playground",
    "score_image": "playground",
    "playground_static_figure": "playground",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
