"""Where the time of an exported PaDiM goes: adlearn's graph and anomalib 2.7's, op by op, and the Python around them.

    python benchmarks/profile_export.py --root $ADLEARN_MVTEC_ROOT --category bottle --threads 2 \\
        --anomalib-python $ANOMALIB_PYTHON

It reads the models `bench_export.py` cached (``bench_export.py --prepare`` fits them: adlearn's PaDiM is exported
again here, so the current export code is profiled; anomalib's is its cached ``Engine.export``), runs each
OpenVINO graph with ``PERF_COUNT`` on real test images, and sums each executed node's time into the steps of
PaDiM (normalisation, backbone, feature upsample + concat, channel choice, Mahalanobis, map upsample, blur,
score, post-processing) by the node's place in the graph. Under load the absolute times are noisy but the
shares are steady: each figure is the median of ``--repeats`` runs. The Python around each graph (PIL resize,
anomalib's ``OpenVINOInferencer`` conversion and its output handling) is timed in the same way, anomalib's in
anomalib's venv. Output: a table per batch size, and ``benchmarks/results/side_by_side/export_profile_<category>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, anomalib_python, mvtec_root, write_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "side_by_side"
STEPS = (
    "normalise",
    "backbone",
    "feature upsample + concat",
    "channel choice",
    "Mahalanobis",
    "map upsample",
    "blur",
    "map upsample + blur (folded)",
    "score (max)",
    "post-processing",
    "other",
)


# ----------------------------------------------------------------------------- classify a graph's nodes
def node_steps(model) -> dict[str, str]:
    """``{node name: PaDiM step}`` for an OpenVINO model (``openvino.Model``), from the graph's structure.

    In graph order: what comes before the first convolution normalises; the backbone runs to its last
    convolution before the Mahalanobis MatMul; between them, the channel Gather is the channel choice and
    the rest (interpolations, concatenation) the feature upsampling; the Mahalanobis arithmetic runs from
    its MatMul to its Sqrt; after it, interpolation is the map's upsampling, padding and convolutions the
    blur, MatMuls the folded upsampling + blur, the max the score, and every other arithmetic node anomalib's
    post-processing (score normalisation, thresholds). Shape bookkeeping after the Sqrt counts as the
    map's upsampling.
    """
    ops = model.get_ordered_ops()
    types = [op.get_type_name() for op in ops]
    names = [op.get_friendly_name() for op in ops]
    convs = [i for i, t in enumerate(types) if t in ("Convolution", "GroupConvolution")]
    matmul = next(i for i, t in enumerate(types) if t == "MatMul")
    sqrt = next(i for i in range(matmul, len(ops)) if types[i] == "Sqrt")
    first_conv, backbone_end = convs[0], max(i for i in convs if i < matmul)
    shape_ops = {"ShapeOf", "Gather", "Concat", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Convert"}
    after = {
        "Interpolate": "map upsample",
        "MatMul": "map upsample + blur (folded)",
        "Pad": "blur",
        "Convolution": "blur",
        "GroupConvolution": "blur",
        "ReduceMax": "score (max)",
        "TopK": "score (max)",
    }
    steps = {}
    for i, (name, kind) in enumerate(zip(names, types)):
        if kind in ("Parameter", "Constant", "Result"):
            continue
        rank = ops[i].get_output_partial_shape(0).rank
        if kind == "Gather" and first_conv < i < matmul and rank.is_static and rank.get_length() == 4:
            step = "channel choice"  # a feature map's channels (adlearn's graph picks them per layer)
        elif i < first_conv:
            step = "normalise"
        elif i <= backbone_end:
            step = "backbone" if kind not in ("Interpolate", "Concat") else "feature upsample + concat"
        elif i < matmul:
            step = "channel choice" if kind == "Gather" else "feature upsample + concat"
        elif i <= sqrt:
            step = "Mahalanobis"
        else:
            step = after.get(kind, "map upsample" if kind in shape_ops else "post-processing")
        steps[name] = step
    return steps


def profile_openvino(graphs: dict[str, Path], pixels, threads: int, repeats: int) -> dict[str, dict]:
    """Run each graph ``repeats`` times with performance counters, the graphs taking turns (so a change of load
    falls on all of them alike): per graph, the median ms of each step and of the whole run."""
    import openvino

    core = openvino.Core()
    settings = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    requests, steps = {}, {}
    for label, xml in graphs.items():
        model = core.read_model(str(xml))
        steps[label] = node_steps(model)
        requests[label] = core.compile_model(model, "CPU", settings).create_infer_request()
        requests[label].infer({0: pixels})  # warm-up
    runs = {label: [] for label in graphs}
    totals = {label: [] for label in graphs}
    unmatched = {label: set() for label in graphs}
    for _ in range(repeats):
        for label, request in requests.items():
            start = time.perf_counter()
            request.infer({0: pixels})
            totals[label].append(1000 * (time.perf_counter() - start))
            per_step = dict.fromkeys(STEPS, 0.0)
            for info in request.get_profiling_info():
                if info.status != info.Status.EXECUTED:
                    continue
                step = _step_of(info.node_name, steps[label])
                if step is None:
                    unmatched[label].add(f"{info.node_name} ({info.node_type})")
                    step = "other"
                per_step[step] += info.real_time.total_seconds() * 1000
            runs[label].append(per_step)
    result = {}
    for label in graphs:
        step_ms = {step: statistics.median(run[step] for run in runs[label]) for step in STEPS}
        result[label] = {
            "wall_ms": statistics.median(totals[label]),
            "nodes_ms": sum(step_ms.values()),
            "step_ms": step_ms,
            "unmatched": sorted(unmatched[label])[:20],
        }
    return result


def _step_of(node: str, steps: dict[str, str]) -> str | None:
    """The step of an executed node: its own name, or for a node the plugin added (a layout Reorder named
    ``<from>_<layouts>_<to>``), the step of the node it feeds."""
    if node in steps:
        return steps[node]
    if "_acdb_abcd_" in node or "_abcd_acdb_" in node:
        fed = node.split("_acdb_abcd_")[-1].split("_abcd_acdb_")[-1]
        return steps.get(fed)
    return next((steps[n] for n in node.split(",") if n in steps), None)


# ----------------------------------------------------------------------------- the Python around the graphs
def time_python_adlearn(images, batch: int, repeats: int) -> dict:
    """ms per batch: PIL resize to [0, 1] CHW (`adlearn.deploy.load_image`) and the stacking into a batch."""
    import numpy as np

    from adlearn.deploy import load_image

    chunk = images[:batch]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.ascontiguousarray(np.stack([load_image(image, (256, 256)) for image in chunk]))
        times.append(1000 * (time.perf_counter() - start))
    return {"resize_ms": statistics.median(times)}


def anomalib_python_side(spec_path: str, out_path: str) -> int:
    """Runs in anomalib's venv: ms per batch of ``OpenVINOInferencer.predict`` split into its parts."""
    import numpy as np
    from anomalib.data import NumpyImageBatch
    from anomalib.deploy import OpenVINOInferencer
    from PIL import Image

    spec = json.loads(Path(spec_path).read_text())
    from bench_export import test_images

    _, _, images = test_images(Path(spec["root"]), spec["category"], spec["images"])
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # its compiled-model cache goes to the working folder
        inferencer = OpenVINOInferencer(
            path=spec["xml"], device="CPU", config={"INFERENCE_NUM_THREADS": spec["threads"]}
        )
        for batch in spec["batches"]:
            chunk = images[:batch]
            parts = {"resize_ms": [], "pre_process_ms": [], "graph_ms": [], "post_process_ms": [], "predict_ms": []}
            for _ in range(spec["repeats"] + 1):
                start = time.perf_counter()
                pixels = np.stack(
                    [np.asarray(i.resize((256, 256), Image.BILINEAR), dtype=np.float32) / 255.0 for i in chunk]
                )
                t1 = time.perf_counter()
                image = inferencer.pre_process(pixels)
                t2 = time.perf_counter()
                predictions = inferencer.model({inferencer.input_blob.any_name: image})
                t3 = time.perf_counter()
                NumpyImageBatch(image=image, **inferencer.post_process(predictions))
                t4 = time.perf_counter()
                inferencer.predict(pixels)
                t5 = time.perf_counter()
                for key, seconds in zip(parts, (t1 - start, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    parts[key].append(1000 * seconds)
            result[str(batch)] = {key: statistics.median(values[1:]) for key, values in parts.items()}
        os.chdir(REPO_ROOT)
    Path(out_path).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    if argv is None and "--anomalib-side" in sys.argv:  # anomalib's venv: no adlearn import
        index = sys.argv.index("--anomalib-side")
        return anomalib_python_side(sys.argv[index + 1], sys.argv[sys.argv.index("--anomalib-out") + 1])
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="MVTec-layout root (default $ADLEARN_MVTEC_ROOT)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=15, help="runs per graph and batch (the median is kept)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anomalib-python", default=None, help="anomalib's venv python (default $ANOMALIB_PYTHON)")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--unfolded", action="store_true", help="also profile our PaDiM exported without its folds (GRAPH_MAPS)"
    )
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.train_steps = 2

    import bench_export
    import numpy as np
    import torch

    from adlearn.export import export

    torch.set_num_threads(args.threads)
    root = mvtec_root(args.root)
    theirs = Path(bench_export.anomalib_spec("padim", args, root, [])["cache"]) / "export.json"
    if not theirs.is_file():
        raise SystemExit(f"no cached anomalib PaDiM export ({theirs}): run bench_export.py --models padim --prepare")
    their_xml = theirs.parent / json.loads(theirs.read_text())["xml"]
    model = bench_export.cached_model("padim", root, args.category, args.train_steps, args.seed)
    _, _, images = bench_export.test_images(root, args.category, args.images)
    report = {"threads": args.threads, "repeats": args.repeats, "load_average_before": os.getloadavg(), "batches": {}}
    python = anomalib_python(args.anomalib_python, required=False)
    their_python = {}
    with tempfile.TemporaryDirectory() as folder:
        graphs = {"adlearn": Path(folder) / "ours" / "model.xml"}
        export(model, Path(folder) / "ours", format="openvino")
        if args.unfolded:  # the same model exported without GRAPH_MAPS' folds, for their effect
            import adlearn.export

            saved = dict(adlearn.export.GRAPH_MAPS)
            adlearn.export.GRAPH_MAPS.clear()
            try:
                export(model, Path(folder) / "unfolded", format="openvino")
            finally:
                adlearn.export.GRAPH_MAPS.update(saved)
            graphs["adlearn unfolded"] = Path(folder) / "unfolded" / "model.xml"
        graphs["anomalib"] = their_xml
        if python:
            spec = {**vars(args), "root": str(root), "xml": str(their_xml)}
            spec_path, out_path = Path(folder) / "spec.json", Path(folder) / "out.json"
            spec_path.write_text(json.dumps(spec))
            subprocess.run(
                [python, __file__, "--anomalib-side", str(spec_path), "--anomalib-out", str(out_path)], check=True
            )
            their_python = json.loads(out_path.read_text())
        for batch in args.batches:
            pixels = np.stack([bench_export_image(image) for image in images[:batch]])  # (B, 3, 256, 256)
            entry = profile_openvino(graphs, pixels, args.threads, args.repeats)
            entry["adlearn_python"] = time_python_adlearn(images, batch, args.repeats)
            entry["anomalib_python"] = their_python.get(str(batch))
            report["batches"][str(batch)] = entry
            print(table(entry, batch, list(graphs)), flush=True)
    report["load_average_after"] = os.getloadavg()  # above the threads used: the shares are the figures to read
    out = Path(args.out) if args.out else RESULTS / f"export_profile_{args.category}.json"
    write_json(out, report)
    print(f"results: {out}", file=sys.stderr)
    return 0


def bench_export_image(image):
    from adlearn.deploy import load_image

    return load_image(image, (256, 256))


def table(entry: dict, batch: int, labels: list[str]) -> str:
    """Markdown: ms per batch and share of each step, the graphs side by side."""
    lines = [
        f"batch {batch}: ms per batch (share of the graph's node time)",
        "| step | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for step in STEPS:
        values = [entry[label]["step_ms"][step] for label in labels]
        if any(values):
            cells = [f"{v:.2f} ({100 * v / entry[label]['nodes_ms']:.0f} %)" for v, label in zip(values, labels)]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append("| graph, wall | " + " | ".join(f"{entry[label]['wall_ms']:.2f}" for label in labels) + " |")
    python = entry.get("anomalib_python") or {}
    resize = entry["adlearn_python"]["resize_ms"]
    lines.append(
        "| Python: resize | "
        + " | ".join(f"{python.get('resize_ms', 0):.2f}" if lbl == "anomalib" else f"{resize:.2f}" for lbl in labels)
        + " |"
    )
    if python:
        rest = python["pre_process_ms"] + python["post_process_ms"]
        lines.append(
            "| Python: inferencer conversion + outputs | "
            + " | ".join(f"{rest:.2f}" if lbl == "anomalib" else "0" for lbl in labels)
            + " |"
        )
    for label in labels:
        if entry[label]["unmatched"]:
            lines.append(f"\n{label}: unmatched nodes: {', '.join(entry[label]['unmatched'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
