"""Run an exported model without adlearn's model code: `InferenceModel`, and the ``adlearn predict`` job.

An export folder (written by `adlearn.export.export`) holds one graph and a manifest::

    model.onnx | model.xml + model.bin     the whole inference path, from [0, 1] RGB pixels to scores
    adlearn_export.json                    format version, model name, input size, normalisation, threshold

The graph's input is a batch ``(B, 3, H, W)`` of float RGB pixels in [0, 1], already resized to the
manifest's ``image_size`` (bilinear, as `adlearn.data.ImageTransform` resizes a PIL image). Everything
after the resize runs inside the graph: the optional center crop, the ImageNet normalisation, the
backbone, the scoring and the map's post-processing (upsampling, blur). Its outputs are the image scores
``(B,)``, and for segmentation models the anomaly maps ``(B, h, w)`` — the same `Prediction` the PyTorch
model returns.

Only the resize stays outside: it depends on the size of each input file, which a graph of fixed shape
does not know. `InferenceModel.load_image` does it with PIL, the same call the training transform makes.

This module needs torch (for `Prediction`), NumPy and PIL, plus onnxruntime or OpenVINO (the optional
extra ``pip install adlearn[export]``), imported when a model is opened. It imports nothing of
adlearn's models, components or timm: a deployment carries the graph, not the code that built it.

The reference implementation's counterpart is ``anomalib.deploy`` (``OpenVINOInferencer``,
``TorchInferencer``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adlearn.prediction import Prediction

#: Version of the export folder's layout and manifest. A reader refuses a newer one.
FORMAT_VERSION = 1
MANIFEST = "adlearn_export.json"
#: The graph file of each format, inside the export folder.
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
RUNTIMES = ("onnxruntime", "openvino")
EXTRA_HINT = "pip install adlearn[export]"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ExportFormatError(ValueError):
    """An export folder this adlearn cannot read (missing manifest, newer format, missing graph)."""


def missing_extra(package: str, error: ImportError) -> ImportError:
    """The ImportError for an absent optional runtime, naming the extra that installs it."""
    return ImportError(f"{package} is not installed ({error}); install the export extra: {EXTRA_HINT}")


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder, checked: it exists, parses, and has a format this adlearn reads."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportFormatError(
            f"{folder} is not an adlearn export folder: it has no {MANIFEST}. Write one with "
            "`adlearn export MODEL.pt --format onnx --out DIR` (or adlearn.export(model, DIR))"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportFormatError(f"{path} is not valid JSON ({error}); export the model again") from error
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ExportFormatError(f"{path} has no integer format_version; export the model again")
    if version > FORMAT_VERSION:
        raise ExportFormatError(
            f"{folder} was written in export format {version} by a newer adlearn "
            f"({manifest.get('adlearn_version', 'unknown version')}); this adlearn reads formats up to "
            f"{FORMAT_VERSION}: upgrade adlearn (pip install -U adlearn), or export the model again with this one"
        )
    return manifest


# ----------------------------------------------------------------------------- pixels in
def load_image(path_or_image, image_size: tuple[int, int]) -> np.ndarray:
    """One image file (or PIL image) -> ``(3, H, W)`` float32 RGB in [0, 1], resized to ``image_size``.

    The resize is PIL's bilinear one, the call `adlearn.data.ImageTransform` makes on a PIL image, so an
    exported model sees exactly the pixels its PyTorch original saw. Raises ``OSError`` / ``ValueError``
    for a file PIL cannot read.
    """
    from PIL import Image

    height, width = image_size
    if isinstance(path_or_image, Image.Image):
        image = path_or_image
    else:
        with Image.open(path_or_image) as opened:
            opened.load()  # read now: a truncated file fails here, with the file named by the caller
            image = opened.copy()
    resized = image.convert("RGB").resize((width, height), Image.BILINEAR)  # PIL takes (width, height)
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)


# ----------------------------------------------------------------------------- the runtime
class InferenceModel:
    """An exported model, run by onnxruntime or OpenVINO, returning adlearn's `Prediction`.

        model = InferenceModel("export_dir")                 # runtime="auto": the folder's own format
        prediction = model.predict(pixels)                   # (B, 3, H, W) float in [0, 1], resized
        prediction = model.predict_files(["a.png", "b.png"]) # or files: resized here
        model.labels(prediction.pred_score)                  # score > threshold, or None without one

    Args:
        path: the export folder (or its ``.onnx`` / ``.xml`` file).
        runtime: ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (onnxruntime for an ONNX file, OpenVINO
            for an OpenVINO IR). OpenVINO also reads an ONNX file directly.
        threads: CPU threads of the runtime (default: the runtime's own choice).
    """

    def __init__(self, path: str | Path, runtime: str = "auto", threads: int | None = None):
        path = Path(path)
        folder = path.parent if path.is_file() else path
        if not folder.is_dir():
            raise FileNotFoundError(f"no export folder at {path}")
        self.folder = folder
        self.manifest = read_manifest(folder)
        if runtime not in ("auto", *RUNTIMES):
            raise ValueError(f"runtime must be 'auto', 'onnxruntime' or 'openvino', got {runtime!r}")
        graph = path if path.is_file() else self._graph_file(runtime)
        if runtime == "auto":
            runtime = "openvino" if graph.suffix == ".xml" else "onnxruntime"
        if runtime == "onnxruntime" and graph.suffix != ".onnx":
            raise ExportFormatError(
                f"{folder} holds an OpenVINO model ({graph.name}), which onnxruntime cannot run: use "
                "runtime='openvino', or export with --format onnx"
            )
        self.graph_file = graph
        self.runtime = runtime
        self.threads = threads
        self._run = self._open_onnxruntime(graph, threads) if runtime == "onnxruntime" else self._open_openvino(graph)

    # -- what the manifest says
    @property
    def name(self) -> str:
        return self.manifest["model"]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the images are resized to: the graph's input size."""
        return tuple(self.manifest["input"]["image_size"])

    @property
    def output_size(self) -> tuple[int, int]:
        """(h, w) of the anomaly maps (the input size after the graph's center crop)."""
        return tuple(self.manifest["input"]["output_size"])

    @property
    def threshold(self) -> float | None:
        return self.manifest.get("threshold")

    @property
    def task(self) -> str:
        return self.manifest.get("task", "segmentation")

    def __repr__(self) -> str:
        return f"InferenceModel({self.name!r}, {self.graph_file.name}, runtime={self.runtime!r})"

    def _graph_file(self, runtime: str) -> Path:
        files = self.manifest.get("files", {})
        order = {"auto": ("onnx", "openvino"), "onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}[runtime]
        for fmt in order:
            if fmt in files and (self.folder / files[fmt]).is_file():
                return self.folder / files[fmt]
        listed = ", ".join(files.values()) or "none"
        raise ExportFormatError(
            f"{self.folder} has no graph runtime={runtime!r} can run (the manifest lists: {listed}); "
            "export the model again with the format you need"
        )

    # -- the two runtimes: each returns run(pixels (B, 3, H, W) float32) -> list of arrays
    @staticmethod
    def _open_onnxruntime(graph: Path, threads: int | None):
        try:
            import onnxruntime
        except ImportError as error:
            raise missing_extra("onnxruntime", error) from error
        options = onnxruntime.SessionOptions()
        # every graph optimisation (constant folding, fusions): onnxruntime's default, stated so it stays so
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda pixels: session.run(None, {input_name: pixels})

    def _open_openvino(self, graph: Path):
        try:
            import openvino
        except ImportError as error:
            raise missing_extra("openvino", error) from error
        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": self.threads} if self.threads else {}
        config["INFERENCE_PRECISION_HINT"] = "f32"  # the same float32 arithmetic as PyTorch (no bf16 on CPU)
        # one stream with every thread: `predict` runs one synchronous request at a time, which a throughput
        # setting (several streams, the threads split between them) would leave on part of the threads
        config["PERFORMANCE_HINT"] = "LATENCY"
        # One compiled graph per batch size, its input shape made static: OpenVINO then plans every operation
        # for that shape once, instead of on each call. A graph that cannot take a static shape runs as saved.
        requests: dict[int, tuple] = {}

        def request_for(batch: int):
            if batch not in requests:
                model = core.read_model(str(graph))
                try:
                    model.reshape([batch, *model.inputs[0].get_partial_shape()[1:]])
                    compiled = core.compile_model(model, "CPU", config)
                except Exception:  # a graph whose shape arithmetic refuses a static batch: the dynamic one
                    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
                if len(requests) >= 4:  # a few batch sizes at a time (the full batches, the last partial one)
                    requests.pop(next(iter(requests)))
                requests[batch] = (compiled.create_infer_request(), compiled.outputs)
            return requests[batch]

        def run(pixels):
            request, outputs = request_for(pixels.shape[0])
            results = request.infer({0: pixels})
            return [np.asarray(results[output]) for output in outputs]

        return run

    # -- scoring
    def check_pixels(self, pixels) -> np.ndarray:
        """``(B, 3, H, W)`` float32 C-contiguous at the graph's size, or a clear error."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.detach().cpu().numpy()
        pixels = np.asarray(pixels)
        height, width = self.image_size
        if pixels.ndim == 3:
            raise ValueError(
                f"expected a batch (B, 3, {height}, {width}); got one image {pixels.shape}: add a batch axis"
            )
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (height, width):
            raise ValueError(
                f"{self.name} was exported for (B, 3, {height}, {width}) RGB pixels in [0, 1]; got {pixels.shape}. "
                "Resize images with InferenceModel.load_image (or use predict_files)"
            )
        return np.ascontiguousarray(pixels, dtype=np.float32)

    def predict(self, pixels) -> Prediction:
        """Score ``(B, 3, H, W)`` RGB pixels in [0, 1] (resized, *not* normalised: the graph does it)."""
        pixels = self.check_pixels(pixels)
        outputs = self._run(pixels)
        named = dict(zip(self.manifest["outputs"], outputs))
        if np.asarray(named["pred_score"]).reshape(-1).shape[0] != pixels.shape[0]:
            raise RuntimeError(
                f"the exported {self.name} returned {np.asarray(named['pred_score']).size} scores for "
                f"{pixels.shape[0]} images: its graph does not support this batch size; score smaller batches"
            )
        return Prediction(
            pred_score=torch.from_numpy(np.asarray(named["pred_score"], dtype=np.float32).reshape(-1)),
            anomaly_map=torch.from_numpy(named["anomaly_map"]) if "anomaly_map" in named else None,
            pred_mask=torch.from_numpy(named["pred_mask"].astype(bool)) if "pred_mask" in named else None,
        )

    def load_image(self, path_or_image) -> np.ndarray:
        """One file or PIL image -> ``(3, H, W)`` pixels at the graph's size (see `load_image`)."""
        return load_image(path_or_image, self.image_size)

    def predict_files(self, paths) -> Prediction:
        """Read, resize and score image files (a bad file raises; `predict_folder` lists it instead)."""
        return self.predict(np.stack([self.load_image(p) for p in paths]))

    def labels(self, scores) -> np.ndarray | None:
        """``score > threshold`` (1 anomalous, 0 normal), or None when the export has no threshold."""
        if self.threshold is None:
            return None
        return (np.asarray(scores) > self.threshold).astype(np.int64)


# ----------------------------------------------------------------------------- adlearn predict
@dataclass
class PredictResult:
    """What `predict_folder` wrote: the CSV, the overlay folder, and the rows (one per input file)."""

    csv: Path
    overlays: Path | None
    rows: list[dict]


def image_files(inputs) -> list[Path]:
    """The files named, and the image files inside the folders named (sorted, recursive)."""
    files = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        else:
            files.append(item)  # a missing or unreadable file becomes a CSV row with its reason
    if not files:
        raise ValueError("no images were given: name image files or folders")
    return files


def overlay(pixels: np.ndarray, anomaly_map: np.ndarray, low: float, high: float, alpha: float = 0.5):
    """An RGB PIL image: the ``(3, h, w)`` pixels under the map in the jet colours, ``low..high`` -> 0..1."""
    from matplotlib import colormaps
    from PIL import Image

    scaled = np.clip((anomaly_map - low) / max(high - low, 1e-12), 0.0, 1.0)  # (h, w)
    heat = colormaps["jet"](scaled)[..., :3]  # (h, w, 3)
    base = pixels.transpose(1, 2, 0)  # (h, w, 3)
    if base.shape[:2] != heat.shape[:2]:  # a center crop: the map covers the central part
        top, left = round((base.shape[0] - heat.shape[0]) / 2), round((base.shape[1] - heat.shape[1]) / 2)
        base = base[top : top + heat.shape[0], left : left + heat.shape[1]]
    blended = (1 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(np.round(blended * 255), 0, 255).astype(np.uint8))


def predict_folder(runner, inputs, out: str | Path, batch_size: int = 16, overlays: bool = True) -> PredictResult:
    """Score image files with ``runner`` and write ``out/predictions.csv`` and ``out/overlays/*.png``.

    ``runner`` is an `InferenceModel` or anything with its interface (``image_size``, ``threshold``,
    ``name``, ``load_image``, ``predict``, ``labels``: `adlearn.export.TorchInference` wraps a PyTorch
    model so). The CSV has one row per input file: ``path, score, label, threshold, error``. ``label`` is
    1 (anomalous: score > threshold) or 0, and empty when the model has no threshold. A file that cannot
    be read gets a row with its ``error`` and no score; the other files are still scored. Overlays share
    one colour scale (the maps' 1st..99.9th percentile over the run) so their heat can be compared.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = image_files(inputs)
    rows, pixels, readable = [], [], []
    for path in files:
        try:
            pixels.append(runner.load_image(path))
            readable.append(len(rows))
            rows.append({"path": str(path), "score": "", "label": "", "threshold": "", "error": ""})
        except Exception as error:  # unreadable: listed with its reason, never dropped
            rows.append({"path": str(path), "score": "", "label": "", "threshold": "", "error": _reason(error)})
    maps = []
    for start in range(0, len(pixels), batch_size):
        prediction = runner.predict(np.stack(pixels[start : start + batch_size]))
        scores = prediction.pred_score.numpy()
        labels = runner.labels(scores)
        for offset, score in enumerate(scores):
            row = rows[readable[start + offset]]
            row["score"] = f"{float(score):.6g}"
            if labels is not None:
                row["label"] = int(labels[offset])
                row["threshold"] = f"{runner.threshold:.6g}"
        if prediction.anomaly_map is not None:
            maps.extend(prediction.anomaly_map.numpy())
    csv_path = out / "predictions.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "score", "label", "threshold", "error"])
        writer.writeheader()
        writer.writerows(rows)
    overlay_dir = None
    if overlays and maps:
        overlay_dir = out / "overlays"
        overlay_dir.mkdir(exist_ok=True)
        every = np.concatenate([m.ravel() for m in maps])
        low, high = np.percentile(every, [1.0, 99.9])
        for position, (index, anomaly_map) in enumerate(zip(readable, maps)):
            name = _overlay_name(Path(rows[index]["path"]), index)
            overlay(pixels[position], anomaly_map, low, high).save(overlay_dir / name)
    return PredictResult(csv_path, overlay_dir, rows)


def _overlay_name(path: Path, index: int) -> str:
    """``0003_broken_large_000.png``: the row's number keeps equal file names of different folders apart."""
    return f"{index:04d}_{path.parent.name}_{path.stem}.png"


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ExportFormatError",
    "InferenceModel",
    "PredictResult",
    "image_files",
    "load_image",
    "predict_folder",
    "read_manifest",
]
