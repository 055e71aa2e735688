"""Export (adlearn/export.py): every registered model is classified, and every exportable one gives, through
onnxruntime and OpenVINO, the scores and maps of its eager PyTorch self within the stated tolerance.

The tiny configurations of tests/tiny_models.py, fitted on the small synthetic category; the exported
graph runs on test images (normal and defective), at a batch size the trace never saw.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from tiny_models import TINY

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from adlearn.deploy import MANIFEST, ExportFormatError, InferenceModel  # noqa: E402
from adlearn.export import EXPORTABLE, NOT_EXPORTABLE, OUTPUTS_LEFT_OUT, export, tolerance  # noqa: E402
from adlearn.models import NotFittedError, TrainedModel, create  # noqa: E402
from adlearn.models.registry import MODEL_CLASSES  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_fitted(synthetic_split):
    """``tiny_fitted(name)``: `fitted` once per model for the whole module (a fit, not the export, is what
    several tests share); each call returns a deep copy, so a test that changes its model changes no other."""
    import copy

    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = fitted(name, synthetic_split)
        model, pixels = cache[name]
        return copy.deepcopy(model), pixels

    return get


def fitted(name: str, synthetic_split):
    """A tiny model of ``name`` fitted on the training images, and (pixels in [0, 1], normalised images) of
    five test images."""
    from adlearn.data import ImageTransform

    model = create(name, device="cpu", seed=0, **TINY[name])
    transform = ImageTransform(image_size=model.image_size, center_crop=model.center_crop, normalize=False)
    _, train = synthetic_split(model.transform, "train")
    _, pixels = synthetic_split(ImageTransform(image_size=model.image_size, center_crop=None, normalize=False), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train, verbose=False) if isinstance(model, TrainedModel) else model.fit(train)
    assert transform.output_size == model.input_size
    return model, pixels[::3][:5]


def eager(model, pixels: torch.Tensor):
    """The model's own prediction on the same pixels: crop (as ImageTransform does) and normalise here."""
    from adlearn.data.transforms import _center_crop_box, normalize

    height, width = model.input_size
    top, left = _center_crop_box(pixels.shape[-2], pixels.shape[-1], (height, width))
    return model.predict(normalize(pixels[:, :, top : top + height, left : left + width]))


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_every_registered_model_is_classified_once(name):
    assert (name in EXPORTABLE) != (name in NOT_EXPORTABLE), (
        f"{name}: add it to EXPORTABLE (and pass test_exported_scores_equal_eager) or to NOT_EXPORTABLE "
        "with its reason, in adlearn/export.py"
    )
    reason = EXPORTABLE.get(name) or NOT_EXPORTABLE.get(name)
    assert len(reason) > 20


def test_tables_do_not_overlap():
    assert not set(EXPORTABLE) & set(NOT_EXPORTABLE)
    assert set(OUTPUTS_LEFT_OUT) <= set(EXPORTABLE)


@pytest.mark.parametrize("name", sorted(EXPORTABLE))
def test_exported_scores_equal_eager(name, tiny_fitted, tmp_path):
    if name not in TINY:
        pytest.skip(f"{name} has no tiny configuration in tests/tiny_models.py yet")
    model, pixels = tiny_fitted(name)
    want = eager(model, pixels)
    export(model, tmp_path, format="onnx,openvino", verify=False)  # one export feeds both runtimes
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["model"] == name and manifest["input"]["image_size"] == list(pixels.shape[-2:])
    for runtime in ("onnxruntime", "openvino"):
        got = InferenceModel(tmp_path, runtime=runtime).predict(pixels)
        for field in manifest["outputs"]:
            expected, actual = getattr(want, field), getattr(got, field)
            assert actual.shape == expected.shape, (runtime, field)
            scale = float(expected.abs().max())
            allowed = tolerance(name)
            assert float((actual - expected).abs().max()) <= allowed["atol"] + allowed["rtol"] * scale, (runtime, field)
    if want.anomaly_map is None:
        assert "anomaly_map" not in manifest["outputs"]


def test_errors_name_the_problem(tiny_fitted, tmp_path):
    unfitted = create("padim", device="cpu", **TINY["padim"])
    with pytest.raises(NotFittedError, match="fit"):
        export(unfitted, tmp_path)
    model, _ = tiny_fitted("padim")
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, openvino"):
        export(model, tmp_path, format="tflite")
    with pytest.raises(TypeError, match="fitted adlearn model"):
        export(torch.nn.Linear(2, 2), tmp_path)


def test_not_exportable_model_says_why(tmp_path):
    name = sorted(NOT_EXPORTABLE)[0]
    model = create(name, device="cpu", **TINY.get(name, {}))
    with pytest.raises(ValueError, match=f"{name} cannot be exported"):
        export(model, tmp_path)


def test_missing_extra_names_the_install_command(tiny_fitted, tmp_path, monkeypatch):
    import builtins

    model, _ = tiny_fitted("padim")
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "openvino", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ImportError, match=r"pip install adlearn\[export\]"):
        export(model, tmp_path, format="openvino")


def test_newer_format_is_refused(tiny_fitted, tmp_path):
    model, pixels = tiny_fitted("padim")
    export(model, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["format_version"] += 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportFormatError, match="newer adlearn.*upgrade adlearn"):
        InferenceModel(tmp_path)


def test_threshold_from_held_out_normal_images(tiny_fitted, synthetic_split, tmp_path):
    from adlearn.data import ImageTransform

    model, pixels = tiny_fitted("padim")
    _, normal = synthetic_split(ImageTransform(image_size=64), "train")
    held_out = normal[:4]  # any normal images work here; a real run holds them out of the fit
    export(model, tmp_path, normal=held_out)
    exported = InferenceModel(tmp_path)
    scores = model.predict(held_out).pred_score
    assert exported.threshold == pytest.approx(float(scores.max()), rel=1e-6)
    assert exported.manifest["threshold_source"].startswith("the 1 quantile of 4")
    labels = exported.labels(exported.predict(pixels).pred_score)
    assert set(np.unique(labels)) <= {0, 1}
    # the model carries it; save -> load keeps it
    path = model.save(tmp_path / "padim.pt")
    from adlearn.models import load

    assert load(path).threshold == model.threshold


# ----------------------------------------------------------------------------- the graph's folds
def test_map_matrices_equal_upsampling_then_blur():
    """K_y · D · K_xᵀ (`map_matrices`) against the two steps it replaces, run as they are: F.interpolate, then
    the blur as padding + two convolutions."""
    import torch.nn.functional as F

    from adlearn.components import GaussianBlur2d
    from adlearn.export import map_matrices

    blur = GaussianBlur2d(sigma=2.0, channels=1, method="conv")
    maps = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(0)).double()  # (B, h, w)
    for mode in ("bilinear", "nearest"):
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        upsampled = F.interpolate(maps[:, None], size=(48, 40), mode=mode, **kwargs)  # (B, 1, H, W)
        want = blur(upsampled.float())[:, 0]  # (B, H, W)
        rows, columns = map_matrices(blur, mode, (12, 10), (48, 40))  # (H, h), (W, w)
        assert rows.shape == (48, 12) and columns.shape == (40, 10)
        got = rows @ maps.float() @ columns.T
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_graph_mode_changes_no_number_and_is_undone(tiny_fitted):
    """Inside `graph_mode` PaDiM and PatchCore run their folded maps (channel choice per layer, permuted
    Gaussian, upsampling + blur as matrices, the bank search as one MatMul): the same predictions up to
    rounding; outside it, the class's own method again."""
    from adlearn.export import graph_mode

    for name in ("padim", "patchcore"):
        model, pixels = tiny_fitted(name)
        want = eager(model, pixels)
        with graph_mode(model):
            assert "anomaly_map" in model.__dict__
            got = eager(model, pixels)
        assert "anomaly_map" not in model.__dict__ and "_graph_folds" not in model.__dict__
        for field in ("pred_score", "anomaly_map"):
            expected, actual = getattr(want, field), getattr(got, field)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
        torch.testing.assert_close(eager(model, pixels).anomaly_map, want.anomaly_map, rtol=0, atol=0)
