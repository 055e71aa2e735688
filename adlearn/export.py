"""Export a fitted model to ONNX or OpenVINO: one graph from [0, 1] RGB pixels to scores and maps.

    import adlearn
    model = adlearn.create("padim", preset="cpu").fit(train)
    adlearn.export(model, "padim_export", format="openvino", normal=held_out_normal_images)
    # then, anywhere, without adlearn's model code:
    from adlearn.deploy import InferenceModel
    InferenceModel("padim_export").predict_files(["part.png"])

What goes inside the graph (`InferenceGraph`): the center crop, the ImageNet normalisation, the
backbone, the model's scoring and the map's post-processing (upsampling, Gaussian blur), i.e. the model's
own ``predict_step``, traced. Only the resize of each file stays outside (`adlearn.deploy.load_image`).

The exporter is torch's TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17. It
records the eager code as it runs, so the graph repeats ``predict_step`` operation for operation, and it
exports every model in `EXPORTABLE` with one code path (no per-model export code beyond `graph_mode`).
The batch axis stays dynamic: a graph traced on 2 images scores any batch. OpenVINO's IR is converted
from that ONNX graph (``openvino.convert_model``), so both runtimes run the same graph.

Two steps make a model's graph-friendly path (`graph_mode`), without changing its numbers beyond
rounding: Gaussian blurs run as two depthwise convolutions (the eager default multiplies by blur
matrices it builds and caches in Python, which a trace would rebuild in float64 inside the graph), and
PatchCore's nearest-neighbour search runs as one distance matrix in torch (the eager default may call
faiss, outside torch, which a trace cannot see).

For PaDiM and PatchCore, `graph_mode` also folds work into constants once, at export (`GRAPH_MAPS`): the
map's upsampling and blur become one small matrix per axis (`map_matrices`), PaDiM's random channel choice
runs per layer before the upsampling (with the Gaussian permuted to match), and PatchCore's search keeps
``−2 · bankᵀ``. Same numbers up to rounding; the eager model is not changed.

Which models export is one table, `EXPORTABLE` / `NOT_EXPORTABLE` (a reason for each). Every registered
model is in one of them (tests/test_export.py checks it, and that each exportable model's exported scores
equal its eager ones within `TOLERANCE`).

The threshold. adlearn's models score; they do not decide. The label threshold an export carries is
chosen here: ``threshold=`` a number, or ``normal=`` held-out normal images (never the test split), whose
largest score becomes the threshold (``quantile=1.0``: no held-out normal image is flagged, up to
the rounding between PyTorch and a runtime for the one on the threshold; a lower quantile accepts that
share of false alarms). `calibrate_threshold` sets ``model.threshold``, which
``model.save`` keeps, so a saved model carries it too. Without one, ``adlearn predict`` writes the scores
and leaves the label column empty.

The reference implementation's counterpart is ``anomalib.deploy`` (``ExportType``, ``Engine.export``).
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adlearn.deploy import EXTRA_HINT, FORMAT_VERSION, GRAPH_FILES, MANIFEST, InferenceModel, load_image
from adlearn.models.base import AnomalyModel, NotFittedError, Prediction

FORMATS = tuple(GRAPH_FILES)  # ("onnx", "openvino")
OPSET = 17
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: |exported − eager| <= atol + rtol · max|eager|, per output, on a batch of test images (float32 both
#: sides; the differences are summation order and the blur's convolution instead of its matrices).
TOLERANCE = {"rtol": 1e-3, "atol": 1e-5}
#: Models with a looser relative tolerance, and why.
LOOSER_TOLERANCE: dict[str, tuple[float, str]] = {
    "dsr": (
        5e-3,
        "four networks in a row (two VQ encoders, the object decoder, two U-Nets) add up OpenVINO's rounding",
    ),
}


def tolerance(name: str) -> dict:
    """``{"rtol", "atol"}`` of model ``name`` (`TOLERANCE`, or its `LOOSER_TOLERANCE`)."""
    return {**TOLERANCE, "rtol": LOOSER_TOLERANCE[name][0]} if name in LOOSER_TOLERANCE else dict(TOLERANCE)


#: Models whose whole inference path exports, and what their graph holds after the backbone.
EXPORTABLE: dict[str, str] = {
    "cfa": "distance to the learned memory of centroids, its k-nearest soft-min, map upsampling and blur",
    "cflow": "the conditional flows' log-likelihood per position and layer, their upsampled mean",
    "dfkde": "PCA, the Gaussian KDE and its logistic score (image score only)",
    "dfm": "PCA and the per-class Gaussian score of pooled features, map upsampling",
    "draem": "the reconstructive and discriminative networks, the map's average pooling and max",
    "dsr": "the vector-quantised encoders, the object-specific decoder, the anomaly detection module",
    "efficient_ad": "teacher, student and autoencoder, the maps' quantile normalisation and upsampling",
    "fastflow": "the 2-D flow per layer, its log-likelihood, upsampled mean and blur",
    "ganomaly": "encoder, decoder and second encoder; the latent distance (image score only)",
    "padim": "the random channel choice, the Mahalanobis distance per position, upsampling and blur",
    "patchcore": "the memory-bank search as one distance matrix, the re-weighted image score, map and blur",
    "reverse_distillation": "the bottleneck and decoder, the per-layer cosine maps, their sum and blur",
    "stfpm": "teacher and student, the per-layer cosine maps, their product",
    "uflow": "the multi-scale flow, the likelihood map and its blur (not the NFA mask: OUTPUTS_LEFT_OUT)",
}

#: Models that do not export, and why.
NOT_EXPORTABLE: dict[str, str] = {
    "ai_vad": (
        "a video model whose objects are found at run time: frame differencing, connected components and "
        "OpenCV's optical flow give each clip its own number of regions, which a graph of fixed operations "
        "cannot express"
    ),
    "csflow": (
        "its three-scale input pyramid is resized with antialiased bilinear interpolation "
        "(aten::_upsample_bilinear2d_aa), which torch's ONNX exporter does not translate at any opset"
    ),
    "rkde": (
        "its region proposals (selective search: scikit-image's segmentation and a merging loop in NumPy) and "
        "their filtering give each image its own "
        "number of boxes, data-dependent control flow outside torch"
    ),
    "winclip": (
        "its window embeddings split the batch with sizes computed in Python, which the trace freezes "
        "to the traced batch size: the graph fails on any other batch"
    ),
}

#: Outputs a model gives in PyTorch but not in its exported graph (and why).
OUTPUTS_LEFT_OUT: dict[str, dict[str, str]] = {
    "uflow": {
        "pred_mask": "the NFA segmentation takes SciPy's binomial tail on NumPy arrays, outside torch: "
        "the export gives U-Flow's score and likelihood map, and predict on the .pt model gives the mask"
    },
}


# ----------------------------------------------------------------------------- the threshold
def calibrate_threshold(model: AnomalyModel, normal, quantile: float = 1.0) -> float:
    """Set ``model.threshold`` from held-out normal images and return it.

    ``normal``: normal images the model was *not* fitted on — a ``(N, 3, H, W)`` tensor prepared with
    ``model.transform``, a Dataset of dict items, or a folder of image files. The threshold is the
    ``quantile`` of their scores (1.0: the largest, so no held-out normal image is flagged).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    scores = TorchInference(model).score_normal(normal)  # (N,)
    model.threshold = float(np.quantile(scores, quantile))
    return model.threshold


# ----------------------------------------------------------------------------- the graph
class InferenceGraph(nn.Module):
    """The exported computation: ``(B, 3, H, W)`` RGB pixels in [0, 1] -> the model's outputs.

    Center crop (if the model has one) -> ImageNet normalisation -> ``model.predict_step``. The model is
    held as a plain attribute, not a submodule: a trace captures its weights as constants of the graph,
    and its saved training history (not a tensor) stays out of the tracer's way.
    """

    def __init__(self, model: AnomalyModel):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.image_size = _pair(model.image_size)
        self.output_size = tuple(model.input_size)  # after the crop
        self.outputs = output_names(model)

    def crop_box(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the center crop, the same rounding as `adlearn.data.ImageTransform`."""
        (height, width), (crop_h, crop_w) = self.image_size, self.output_size
        return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:  # (B, 3, H, W) in [0, 1]
        top, left, height, width = self.crop_box()
        if (height, width) != self.image_size:
            pixels = pixels[:, :, top : top + height, left : left + width]  # (B, 3, h, w)
        images = (pixels - self.mean) / self.std  # ImageNet-normalised, as model.transform gives
        prediction = self.model.predict_step(images)
        return tuple(getattr(prediction, name) for name in self.outputs)


def output_names(model: AnomalyModel) -> list[str]:
    """The graph's outputs: ``pred_score``, and ``anomaly_map`` for segmentation models."""
    return ["pred_score"] + (["anomaly_map"] if model.task != "classification" else [])


class _GraphSearch:
    """PatchCore's nearest-bank-entry search in torch operations only (what a trace can record).

    Squared distances ‖q‖² − 2 q·b + ‖b‖² rank all bank entries at once (N, M); the k winners' distances
    are then recomputed exactly as ‖q − b‖, as `adlearn.components.NearestNeighbors` does.
    """

    def __init__(self, bank: torch.Tensor):
        self.bank = bank  # (M, E)
        self.device = bank.device
        self.bank_sq_norms = bank.pow(2).sum(1)  # (M,)
        # −2·bankᵀ, folded once here: the graph then holds one MatMul + Add, not a Multiply over the (N, M)
        # matrix as well (doubling is exact in floating point, so the ranking is the same numbers)
        self.minus_twice_bank_t = (-2.0 * bank).T.contiguous()  # (E, M)

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:  # (N, E)
        ranking = queries @ self.minus_twice_bank_t + self.bank_sq_norms[None, :]  # (N, M); ‖q‖² ranks nothing
        candidates = ranking.topk(k, dim=1, largest=False).indices  # (N, k)
        exact = torch.linalg.vector_norm(self.bank[candidates] - queries[:, None, :], dim=2)  # (N, k)
        distances, order = exact.sort(dim=1)
        return distances, candidates.gather(1, order)


def map_matrices(blur, mode: str, low: tuple[int, int], high: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K_y (H, h), K_x (W, w))`` with ``blur(upsample(D)) = K_y · D · K_xᵀ`` for every ``(h, w)`` map ``D``.

    Upsampling (nearest or bilinear, `adlearn.models.common.upsample_map`) and a 'same' Gaussian blur
    (`GaussianBlur2d.blur_matrices`) are both linear and act on each axis separately, so their product is one
    small matrix per axis. Each upsampling matrix is the upsampled identity (the same call the model makes),
    multiplied in float64 and rounded once to float32.
    """
    from adlearn.models.common import upsample_map

    factors = []
    for n, size in zip(low, high):
        basis = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1)  # n maps with one hot row each
        factors.append(upsample_map(basis, (size, 1), mode=mode).view(n, size).T)  # (size, n)
    blur_y, blur_x = blur.blur_matrices(high[0], high[1], "cpu", torch.float64)  # (H, H), (W, W)
    return (blur_y @ factors[0]).float(), (blur_x @ factors[1]).float()


def _padim_graph_map(model, images: torch.Tensor) -> torch.Tensor:
    """PaDiM's ``anomaly_map`` as the graph runs it: the same steps, with three folds done once at export.

    1. The random channel choice is applied to each layer before its upsampling (only the chosen channels
       are upsampled and concatenated), in layer order; the Gaussian's mean and precision matrices are
       permuted to that order, which leaves every Mahalanobis distance unchanged (a sum over the same
       products).
    2. Upsampling and blur are one matrix per axis (`map_matrices`): ``K_y · D · K_xᵀ``.
    """
    folded = model.__dict__["_graph_folds"]
    features = list(model.feature_extractor(images).values())  # [(B, C_l, h_l, w_l)]
    size = features[0].shape[-2:]
    chosen = []
    for feature, local in zip(features, folded["channels"]):
        if local.numel():
            feature = feature.index_select(1, local)  # (B, c_l, h_l, w_l)
            if feature.shape[-2:] != size:
                feature = torch.nn.functional.interpolate(feature, size=size, mode="nearest")
            chosen.append(feature)
    embedding = torch.cat(chosen, dim=1)  # (B, n_features, h, w), channels in layer order
    distances = folded["gaussian"].mahalanobis(embedding)  # (B, h, w)
    if "map" not in folded:
        folded["map"] = map_matrices(model.blur, "bilinear", tuple(size), tuple(images.shape[-2:]))
    rows, columns = folded["map"]  # (H, h), (W, w)
    return rows @ distances @ columns.T  # (B, H, W)


def _padim_folds(model) -> dict:
    """The per-layer channel lists and the permuted Gaussian that `_padim_graph_map` uses."""
    import copy

    index = model.channel_index.cpu()  # (n,) into the concatenated layers
    bounds = torch.tensor([0, *model.feature_extractor.out_dims]).cumsum(0)
    channels, order = [], []
    for start, end in zip(bounds[:-1], bounds[1:]):
        positions = torch.nonzero((index >= start) & (index < end)).flatten()  # their order in channel_index
        channels.append(index[positions] - start)
        order.append(positions)
    order = torch.cat(order)  # layer order -> channel_index order
    gaussian = copy.deepcopy(model.gaussian)
    gaussian.mean = model.gaussian.mean[order]  # (C, hw)
    gaussian.inv_covariance = model.gaussian.inv_covariance[:, order][:, :, order]  # (hw, C, C)
    return {"channels": channels, "gaussian": gaussian}


def _patchcore_graph_map(model, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PatchCore's ``anomaly_map`` as the graph runs it: nearest upsampling and blur as ``K_y · S · K_xᵀ``."""
    folded = model.__dict__["_graph_folds"]
    if "map" not in folded:
        folded["map"] = map_matrices(model.blur, "nearest", tuple(scores.shape[-2:]), tuple(size))
    rows, columns = folded["map"]  # (H, h), (W, w)
    return rows @ scores @ columns.T  # (B, H, W)


#: Models whose ``anomaly_map`` the graph runs in a folded form (same numbers up to rounding; see each).
GRAPH_MAPS = {
    "padim": (_padim_graph_map, _padim_folds),
    "patchcore": (_patchcore_graph_map, lambda model: {}),
}


@contextmanager
def graph_mode(model: AnomalyModel) -> Iterator[AnomalyModel]:
    """The model with its graph-friendly steps (see the module docstring); restored on exit."""
    from adlearn.components import GaussianBlur2d

    blurs = [module for module in model.modules() if isinstance(module, GaussianBlur2d)]
    methods = [blur.method for blur in blurs]
    had_search = hasattr(model, "_search") and hasattr(model, "memory_bank")
    search = model.__dict__.get("_search") if had_search else None
    folded_map = GRAPH_MAPS.get(model.name)
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)  # attention as plain operations, not one fused kernel
        for blur in blurs:
            blur.method = "conv"
        if had_search:
            model._search = _GraphSearch(model.memory_bank)
        if folded_map is not None:
            function, folds = folded_map
            model.__dict__["_graph_folds"] = folds(model)
            model.__dict__["anomaly_map"] = types.MethodType(function, model)  # shadows the class's method
            with torch.no_grad():  # one eager run builds the map matrices now: a trace would record their making
                model.predict_step(torch.zeros(1, 3, *_pair(model.input_size), device=model.device))
        yield model
    finally:
        for blur, method in zip(blurs, methods):
            blur.method = method
        if had_search:
            model._search = search
        if folded_map is not None:
            model.__dict__.pop("anomaly_map", None)
            model.__dict__.pop("_graph_folds", None)
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)


# ----------------------------------------------------------------------------- export
def check_exportable(model) -> None:
    """Raise a clear error unless ``model`` is a fitted adlearn model listed in `EXPORTABLE`."""
    if not isinstance(model, AnomalyModel):
        raise TypeError(f"export expects a fitted adlearn model, got {type(model).__name__}")
    name = model.name
    if name in NOT_EXPORTABLE:
        raise ValueError(f"{name} cannot be exported: {NOT_EXPORTABLE[name]}")
    if name not in EXPORTABLE:
        raise ValueError(
            f"{name} is in neither EXPORTABLE nor NOT_EXPORTABLE (adlearn/export.py): classify it there first"
        )
    if not model.is_fitted:
        raise NotFittedError(f"{name} is not fitted yet: call model.fit(train_data) before exporting it")


def _require(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"exporting needs {package}, which is not installed; install the extra: {EXTRA_HINT}"
        ) from error


def export(
    model: AnomalyModel,
    out: str | Path,
    format: str | tuple[str, ...] = "onnx",
    *,
    threshold: float | None = None,
    normal=None,
    quantile: float = 1.0,
    verify: bool = True,
) -> Path:
    """Write ``model``'s inference graph and its manifest to the folder ``out``; returns ``out``.

    Args:
        format: ``"onnx"``, ``"openvino"``, or both (``("onnx", "openvino")`` or ``"onnx,openvino"``).
        threshold: the label threshold the export carries; else ``normal`` images calibrate one
            (`calibrate_threshold`, at ``quantile``); else ``model.threshold`` if the model has one.
        verify: run each written graph once on a probe batch and compare it with the eager model
            (`TOLERANCE`); a mismatch is an error, not a silent wrong deployment.
    """
    formats = _formats(format)
    check_exportable(model)
    _require("onnx")
    if "openvino" in formats:
        _require("openvino")
    if threshold is None and normal is not None:
        threshold = calibrate_threshold(model, normal, quantile)
        source = f"the {quantile:g} quantile of {_count(normal)} held-out normal images' scores"
    elif threshold is not None:
        source = "given"
    else:
        threshold = getattr(model, "threshold", None)
        source = "the saved model's" if threshold is not None else None

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [MANIFEST, *(name for f in FORMATS for name in _graph_names(f))]:
        (out / stale).unlink(missing_ok=True)  # a folder re-used for a new export holds no old graph
    graph = InferenceGraph(model.cpu())
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = out / GRAPH_FILES["onnx"] if "onnx" in formats else Path(scratch) / "model.onnx"
        write_onnx(model, graph, onnx_path)
        openvino_source = None
        if "openvino" in formats:
            openvino_source = write_openvino(onnx_path, out / GRAPH_FILES["openvino"], model, graph)
    manifest = _manifest(model, graph, formats, threshold, source)
    if openvino_source:
        manifest["openvino_converted_from"] = openvino_source
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    model.to_device()
    if verify:
        for fmt in formats:
            verify_export(model, out, runtime="onnxruntime" if fmt == "onnx" else "openvino")
    return out


def write_onnx(model: AnomalyModel, graph: InferenceGraph, path: Path) -> Path:
    """Trace ``graph`` (batch axis dynamic) and write it to ``path`` at opset `OPSET`."""
    probe = torch.rand(2, 3, *graph.image_size, generator=torch.Generator().manual_seed(0))  # (2, 3, H, W)
    axes = {"pixels": {0: "batch"}, **{name: {0: "batch"} for name in graph.outputs}}
    with graph_mode(model), torch.no_grad(), _frozen(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
        torch.onnx.export(
            graph,
            (probe,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=graph.outputs,
            dynamic_axes=axes,
        )
    return path


def write_openvino(onnx_path: Path, xml_path: Path, model: AnomalyModel, graph: InferenceGraph) -> str:
    """Write OpenVINO's IR (``model.xml`` + ``model.bin``, float32 weights); returns what it came from.

    Converted from the ONNX graph, so both runtimes run one graph; where OpenVINO's ONNX reader refuses
    a node (DFKDE's shape arithmetic), from the PyTorch graph itself through OpenVINO's PyTorch reader.
    """
    import openvino

    try:
        converted, source = openvino.convert_model(str(onnx_path)), "onnx"
    except Exception:  # OpenVINO's ONNX frontend: OpConversionFailure on a node it cannot read
        probe = torch.rand(2, 3, *graph.image_size, generator=torch.Generator().manual_seed(0))
        with graph_mode(model), torch.no_grad(), _frozen(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted, source = openvino.convert_model(graph, example_input=probe), "pytorch"
    openvino.save_model(converted, str(xml_path), compress_to_fp16=False)
    return source


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` while tracing (the tracer embeds them as constants)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def verify_export(model: AnomalyModel, folder: str | Path, runtime: str = "onnxruntime", pixels=None) -> dict:
    """Run the exported graph and the eager model on the same pixels; raise if they differ beyond
    `TOLERANCE`. Returns ``{output: largest relative difference}``. ``pixels``: (B, 3, H, W) in [0, 1]
    (default: a seeded random batch of 3, a batch size the trace never saw)."""
    exported = InferenceModel(folder, runtime=runtime)
    if pixels is None:
        pixels = torch.rand(3, 3, *exported.image_size, generator=torch.Generator().manual_seed(1))
    pixels = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
    eager = TorchInference(model).predict(pixels)
    result = exported.predict(pixels)
    differences = {}
    for name in exported.manifest["outputs"]:
        want, got = getattr(eager, name).float(), getattr(result, name).float()
        scale = float(want.abs().max())
        differences[name] = float((want - got).abs().max()) / max(scale, 1e-12)
        allowed = tolerance(model.name)
        if not torch.allclose(got, want, rtol=0, atol=allowed["atol"] + allowed["rtol"] * scale):
            raise RuntimeError(
                f"the {runtime} export of {model.name} differs from the PyTorch model on {name}: largest "
                f"difference {differences[name]:.2e} of its scale (tolerance {allowed['rtol']:g}). "
                "Please report it with the model's configuration"
            )
    return differences


def _manifest(model, graph: InferenceGraph, formats, threshold, source) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        adlearn_version = version("adlearn")
    except PackageNotFoundError:  # a source tree that was never installed
        adlearn_version = "unknown"
    plain = (int, float, str, bool, type(None))
    config = {
        key: (list(value) if isinstance(value, tuple) else value)
        for key, value in model.config.items()
        if isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value))
    }
    return {
        "format_version": FORMAT_VERSION,
        "adlearn_version": adlearn_version,
        "model": model.name,
        "task": model.task,
        "config": config,
        "files": {fmt: GRAPH_FILES[fmt] for fmt in formats},
        "input": {
            "name": "pixels",
            "layout": "NCHW, RGB, float32 in [0, 1]",
            "image_size": list(graph.image_size),
            "resize": "bilinear (PIL), outside the graph",
            "center_crop": None if graph.output_size == graph.image_size else list(graph.output_size),
            "output_size": list(graph.output_size),
        },
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "inside_graph": True},
        "outputs": graph.outputs,
        "threshold": None if threshold is None else float(threshold),
        "threshold_source": source,
        "opset": OPSET,
        "exporter": "torch.onnx.export (TorchScript tracer, dynamo=False)",
        "tolerance": tolerance(model.name),
    }


def _formats(format) -> tuple[str, ...]:
    names = format.split(",") if isinstance(format, str) else list(format)
    names = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format {unknown[0] if unknown else format!r}; formats: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def _graph_names(fmt: str) -> list[str]:
    name = GRAPH_FILES[fmt]
    return [name, name.replace(".xml", ".bin")] if name.endswith(".xml") else [name]


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _count(normal) -> int:
    """How many held-out normal images: a folder's image files, or a tensor's / dataset's length."""
    if isinstance(normal, (str, Path)):
        from adlearn.deploy import image_files

        return len(image_files([normal]))
    return len(normal)


# ----------------------------------------------------------------------------- eager twin of InferenceModel
class TorchInference:
    """A PyTorch model behind `adlearn.deploy.InferenceModel`'s interface: [0, 1] pixels in, `Prediction`
    out (crop and normalisation done here, as the exported graph does them). ``adlearn predict`` runs a
    saved ``.pt`` model through it."""

    def __init__(self, model: AnomalyModel, threshold: float | None = None):
        self.model = model
        self.graph = InferenceGraph(model)
        self.threshold = threshold if threshold is not None else getattr(model, "threshold", None)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def image_size(self) -> tuple[int, int]:
        return self.graph.image_size

    def load_image(self, path_or_image) -> np.ndarray:
        return load_image(path_or_image, self.image_size)

    @torch.no_grad()
    def predict(self, pixels) -> Prediction:
        """``(B, 3, H, W)`` pixels in [0, 1] at ``image_size`` -> the model's `Prediction` (on the CPU)."""
        pixels = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
        height, width = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, height, width):
            raise ValueError(f"expected (B, 3, {height}, {width}) pixels in [0, 1], got {tuple(pixels.shape)}")
        top, left, crop_h, crop_w = self.graph.crop_box()
        pixels = pixels[:, :, top : top + crop_h, left : left + crop_w]
        images = (pixels - self.graph.mean) / self.graph.std  # (B, 3, h, w)
        return self.model.predict(images.to(self.model.device)).cpu()

    def labels(self, scores) -> np.ndarray | None:
        if self.threshold is None:
            return None
        return (np.asarray(scores) > self.threshold).astype(np.int64)

    def score_normal(self, normal, batch_size: int = 16) -> np.ndarray:
        """Image scores of held-out normal images: a tensor prepared with ``model.transform``, a Dataset of
        dict items, or a folder of image files (read and resized here)."""
        if isinstance(normal, (str, Path)):
            from adlearn.deploy import image_files

            files = image_files([normal])
            batches = [
                np.stack([self.load_image(f) for f in files[s : s + batch_size]])
                for s in range(0, len(files), batch_size)
            ]
            return np.concatenate([self.predict(batch).pred_score.numpy() for batch in batches])
        if isinstance(normal, torch.Tensor):
            images = normal
        else:
            if len(normal) == 0:
                raise ValueError("no held-out normal images were given to calibrate the threshold")
            images = torch.stack([normal[i]["image"] for i in range(len(normal))])
        if len(images) == 0:
            raise ValueError("no held-out normal images were given to calibrate the threshold")
        scores = [
            self.model.predict(chunk.to(self.model.device)).pred_score.cpu() for chunk in images.split(batch_size)
        ]
        return torch.cat(scores).numpy()


def load_runner(source: str | Path, runtime: str = "auto", threshold: float | None = None, threads: int | None = None):
    """What ``adlearn predict`` scores with: an `InferenceModel` for an export folder, a `TorchInference`
    for a saved ``.pt`` model. ``threshold`` overrides the one it carries."""
    source = Path(source)
    if source.is_dir():
        runner = InferenceModel(source, runtime=runtime, threads=threads)
        if threshold is not None:
            runner.manifest["threshold"] = float(threshold)
        return runner
    from adlearn.models import load

    if threads:
        torch.set_num_threads(threads)
    return TorchInference(load(source, device="cpu"), threshold=threshold)


class _CallableModule(types.ModuleType):
    """``adlearn.export(model, out)`` calls `export`. Importing this module sets the package attribute
    ``adlearn.export`` to the module itself (Python's import system does), so the module is made callable."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "EXPORTABLE",
    "FORMATS",
    "NOT_EXPORTABLE",
    "OUTPUTS_LEFT_OUT",
    "LOOSER_TOLERANCE",
    "TOLERANCE",
    "InferenceGraph",
    "TorchInference",
    "calibrate_threshold",
    "check_exportable",
    "export",
    "graph_mode",
    "load_runner",
    "tolerance",
    "verify_export",
]
