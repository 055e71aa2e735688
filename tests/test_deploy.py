"""The deployment runtime (adlearn/deploy.py): it runs an export without adlearn's model code, reads
images as the training transform does, and refuses what it cannot read with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY

pytest.importorskip("onnxruntime")

from adlearn.deploy import MANIFEST, ExportFormatError, InferenceModel, load_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_split):
    """A tiny PatchCore fitted on the synthetic category (center crop 56 of 64), exported to ONNX and
    OpenVINO: ``(folder, model)``."""
    from adlearn.export import export
    from adlearn.models import create

    model = create("patchcore", device="cpu", seed=0, center_crop="auto", **TINY["patchcore"])
    _, train = synthetic_split(model.transform, "train")
    model.fit(train)
    folder = tmp_path_factory.mktemp("export")
    export(model, folder, format="onnx,openvino", threshold=1.5)
    return folder, model


def test_import_loads_no_model_code(exported):
    folder, _ = exported
    code = (
        "import sys, numpy as np\n"
        "from adlearn.deploy import InferenceModel\n"
        f"model = InferenceModel({str(folder)!r})\n"
        "model.predict(np.zeros((2, 3, 64, 64), np.float32))\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('adlearn.models', 'adlearn.components', 'timm', "
        "'adlearn.data', 'adlearn.train')) or m == 'timm')\n"
        "print(bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_load_image_matches_the_training_transform(tmp_path):
    from adlearn.data import ImageTransform

    rng = np.random.default_rng(0)
    path = tmp_path / "part.png"
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(path)
    want = ImageTransform(image_size=(48, 40), normalize=False)(Image.open(path))  # (3, 48, 40)
    got = load_image(path, (48, 40))
    assert got.shape == (3, 48, 40) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want.numpy())


def test_crop_and_normalisation_inside_the_graph(exported):
    folder, model = exported
    from adlearn.data import ImageTransform

    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # resized, not cropped
    images = torch.stack([ImageTransform(image_size=64, center_crop=56)(p) for p in pixels])  # (3, 3, 56, 56)
    want = model.predict(images)
    for runtime in ("onnxruntime", "openvino"):
        got = InferenceModel(folder, runtime=runtime).predict(pixels)
        assert got.anomaly_map.shape == (3, 56, 56)
        torch.testing.assert_close(got.pred_score, want.pred_score, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(got.anomaly_map, want.anomaly_map, rtol=1e-3, atol=1e-4)


def test_manifest_and_labels(exported):
    folder, _ = exported
    runtime = InferenceModel(folder)
    assert runtime.name == "patchcore" and runtime.image_size == (64, 64) and runtime.output_size == (56, 56)
    assert runtime.threshold == 1.5 and runtime.manifest["threshold_source"] == "given"
    assert runtime.manifest["normalization"]["inside_graph"] is True
    np.testing.assert_array_equal(runtime.labels(np.array([1.0, 1.5, 2.0])), [0, 0, 1])  # above it


def test_wrong_input_is_a_clear_error(exported):
    folder, _ = exported
    runtime = InferenceModel(folder)
    with pytest.raises(ValueError, match=r"exported for \(B, 3, 64, 64\).*load_image"):
        runtime.predict(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="one image"):
        runtime.predict(np.zeros((3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="runtime must be"):
        InferenceModel(folder, runtime="tensorrt")


def test_not_an_export_folder_and_newer_formats(tmp_path, exported):
    with pytest.raises(ExportFormatError, match="no adlearn_export.json.*adlearn export"):
        InferenceModel(tmp_path)
    folder, _ = exported
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in folder.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportFormatError, match="export format 99 by a newer adlearn"):
        InferenceModel(copy)
    (copy / "model.onnx").unlink()
    manifest["format_version"] = 1
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert InferenceModel(copy).runtime == "openvino"  # the IR is left: auto picks OpenVINO
    with pytest.raises(ExportFormatError, match="no graph runtime='onnxruntime' can run"):
        InferenceModel(copy, runtime="onnxruntime")


def test_openvino_reads_the_onnx_file_too(exported):
    folder, _ = exported
    pixels = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    a = InferenceModel(folder / "model.onnx", runtime="openvino").predict(pixels)
    b = InferenceModel(folder, runtime="onnxruntime").predict(pixels)
    torch.testing.assert_close(a.pred_score, b.pred_score, rtol=1e-4, atol=1e-5)
