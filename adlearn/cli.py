"""The ``adlearn`` command line.

    adlearn models [--presets]           # one registered model name per line (and its presets)
    adlearn evaluate MODEL [--preset cpu|paper] [--root DIR --category NAME] [--image-size 256] [--backbone NAME]
            [--pretrained auto|hub|none|PATH] [--set KEY=VALUE ...] [--device auto|cpu|cuda]
            [--seed 0] [--json FILE] [--figure FILE] [--save FILE]
    adlearn demo [--models padim,...] [--preset cpu] [--set KEY=VALUE ...]  # the README's job, on synthetic data
    adlearn data synth --root DIR [--category NAME|all] [--image-size N] [--seed S]
    adlearn benchmark [--models all|a,b] [--root DIR] [--seeds 0,1,2] [--preset cpu|paper] --out DIR
    adlearn sweep NOTEBOOK... -p NAME V1,V2 ... --out DIR [--jobs N | --scheduler tcp://HOST:PORT]
    adlearn export MODEL.pt --format onnx|openvino|onnx,openvino --out DIR [--threshold T | --normal DIR]
    adlearn predict MODEL.pt|EXPORT_DIR IMAGE_OR_FOLDER... --out DIR [--runtime auto|onnxruntime|openvino]

Without ``--root`` every command uses the embedded synthetic dataset (generated once, cached).
Every command builds its models through `adlearn.options` (defaults <- ``--preset`` <- explicit options),
exactly as ``adlearn.create(name, preset=..., **options)`` does: the same options give the same model.
``evaluate`` starts from the paper's defaults; ``demo`` and ``benchmark`` name the ``cpu`` preset (offline
backbones, laptop recipes) as their default and print what it sets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OFFLINE_BACKBONE = "efficientnet_lite0"


def run_options(args, extra: dict | None = None) -> dict:
    """The explicit options of an ``evaluate`` / ``demo`` command line: ``--device``, ``--seed``, the
    ``--image-size`` / ``--backbone`` / ``--pretrained`` given, then ``--set`` (``extra``). The preset
    (``--preset``) and the model's defaults lie under them (`adlearn.options.resolve_options`)."""
    options = {"device": args.device, "seed": args.seed}
    for key in ("image_size", "backbone", "pretrained"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    options.update(extra or {})
    return options


def _preset(args) -> str | None:
    preset = getattr(args, "preset", None)
    return None if preset == "none" else preset


def _datasets(root: str | None, category: str | None, transform, image_size: int, seed: int):
    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset, synthetic_root

    if root is None:
        root = synthetic_root(image_size=image_size, seed=seed)
        category = category or SYNTHETIC_CATEGORIES[0]
    elif category is None:
        found = sorted(p.name for p in Path(root).iterdir() if (p / "train").is_dir()) if Path(root).is_dir() else []
        raise SystemExit(f"--root given without --category; categories under {root}: {', '.join(found) or 'none'}")
    train = MVTecDataset(root, category, split="train", transform=transform)
    test = MVTecDataset(root, category, split="test", transform=transform)
    return category, train, test


def demo_options(args) -> dict[str, dict]:
    """Each ``adlearn demo`` model's explicit options: the run's (`run_options`, ``--set``) by the rule of
    `adlearn.options.options_for_models` — a plain ``KEY`` to the models that have it (the others are
    named), ``MODEL.KEY`` to one model; checked for every model (and its preset) before the first fit."""
    from adlearn.options import options_for_models, parse_set, resolve_options

    models = [m for m in args.models.split(",") if m]
    per_model = options_for_models(models, run_options(args, parse_set(args.set)))
    for model_name in models:
        resolve_options(model_name, _preset(args), per_model[model_name])
    return per_model


def run_evaluation(
    model_name: str, args, extra: dict, category: str | None = None, options: dict | None = None
) -> dict:
    """Fit and evaluate one model: ``options`` (default: `run_options` of ``args`` and ``extra``) over
    ``--preset``, built by `adlearn.options.build_model` as ``adlearn.create`` builds it."""
    from adlearn.evaluate import fit_and_evaluate
    from adlearn.options import build_model

    options = run_options(args, extra) if options is None else options
    model = build_model(model_name, preset=_preset(args), options=options)
    if getattr(model, "input_kind", "image") == "video":
        return _run_video_evaluation(model, args)
    image_size = model.image_size if isinstance(model.image_size, int) else max(model.image_size)
    category, train, test = _datasets(args.root, category or args.category, model.transform, image_size, args.seed)
    print(
        f"{model.name}: fitting on {len(train)} '{category}' images, testing on {len(test)} ({model.device})",
        file=sys.stderr,
    )
    results = fit_and_evaluate(
        model,
        train,
        test,
        return_predictions=bool(args.figure),
        false_alarm_rate=getattr(args, "false_alarm_rate", None),
        threshold_fraction=getattr(args, "threshold_fraction", 0.2),
    )
    predictions = results.pop("predictions", None)
    results = _run_record(model, args, category, results, image_size=model.image_size)
    if args.figure and predictions is not None:
        _write_figure(args.figure, model, test, predictions, category)
    if getattr(args, "save", None):
        model.save(args.save)
    return results


def _run_record(model, args, category: str, metrics: dict, **extra) -> dict:
    """What ``adlearn evaluate`` prints and writes: the metrics with the model, data, options and version."""
    import adlearn

    plain = (int, float, str, bool, type(None), list, tuple)
    return {
        "model": model.name,
        "category": category,
        **metrics,
        "backbone": model.config.get("backbone"),
        **extra,
        "preset": _preset(args),
        "device": str(model.device),
        "seed": args.seed,
        "adlearn_version": adlearn.__version__,
        "config": {k: v for k, v in model.config.items() if isinstance(v, plain)},
    }


def _video_datasets(root: str | None, video_format: str, seed: int):
    """Training and test clips: the embedded synthetic surveillance videos, or a UCSD Ped2 / Avenue folder."""
    from adlearn.data import ClipDataset, avenue, synthetic_surveillance, ucsd_ped2

    if root is None:
        name, train, test = "synthetic surveillance", *(synthetic_surveillance(s, seed=seed) for s in ("train", "test"))
    elif video_format == "avenue":
        name, train, test = f"Avenue at {root}", avenue(root, "train"), avenue(root, "test")
    else:
        name, train, test = f"UCSD Ped2 at {root}", ucsd_ped2(root, "train"), ucsd_ped2(root, "test")
    return name, ClipDataset(train, clip_length=2), ClipDataset(test, clip_length=2)


def _run_video_evaluation(model, args) -> dict:
    """``adlearn evaluate`` for a video model (``input_kind = "video"``): frame-level metrics on clips."""
    from adlearn.evaluate import fit_and_evaluate

    name, train, test = _video_datasets(args.root, getattr(args, "video_format", "ucsd"), args.seed)
    print(
        f"{model.name}: fitting on {len(train)} clips of {len(train.videos)} '{name}' videos, testing on "
        f"{len(test)} clips ({model.device})",
        file=sys.stderr,
    )
    results = fit_and_evaluate(model, train, test, return_predictions=bool(args.figure))
    predictions = results.pop("predictions", None)
    results = _run_record(model, args, name, results)
    if args.figure and predictions is not None:
        _write_frame_score_figure(args.figure, predictions, f"{model.name} on {name}")
    if getattr(args, "save", None):
        model.save(args.save)
    return results


def _write_frame_score_figure(path, predictions, title: str) -> None:
    """Each test video's frame scores, its anomalous frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    videos = list(dict.fromkeys(predictions["videos"]))
    figure, axes = plt.subplots(len(videos), 1, figsize=(8, 1.6 * len(videos)), squeeze=False, sharey=True)
    for axis, video in zip(axes[:, 0], videos):
        chosen = np.array([v == video for v in predictions["videos"]])
        frames, labels = predictions["frame_indices"][chosen], predictions["labels"][chosen]
        axis.fill_between(frames, 0, 1, where=labels > 0, color="red", alpha=0.2, transform=axis.get_xaxis_transform())
        axis.plot(frames, predictions["pred_scores"][chosen], color="black", linewidth=1)
        axis.set_ylabel(video, fontsize=8)
    axes[0, 0].set_title(f"{title}: frame scores (anomalous frames shaded)")
    axes[-1, 0].set_xlabel("frame")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    print(f"wrote {path}", file=sys.stderr)


def _write_figure(path, model, test, predictions, category) -> None:
    import numpy as np
    import torch

    from adlearn.plotting import anomaly_map_grid

    labels = predictions["labels"]
    # Show a few normal and mostly anomalous images, in dataset order.
    chosen = list(np.flatnonzero(labels == 1)[:: max(1, (labels == 1).sum() // 6)][:6]) + list(
        np.flatnonzero(labels == 0)[:2]
    )
    images = torch.stack([test[i]["image"] for i in chosen])
    if predictions["anomaly_maps"] is None:
        print(f"no figure written to {path}: {model.name} makes no anomaly map (an image-level model)", file=sys.stderr)
        return
    maps = predictions["anomaly_maps"][chosen]
    anomaly_map_grid(
        images,
        maps,
        masks=predictions["masks"][chosen],
        scores=predictions["pred_scores"][chosen],
        labels=labels[chosen],
        title=f"{model.name} on {category}",
        path=path,
    )
    print(f"wrote {path}", file=sys.stderr)


def cmd_models(args) -> int:
    from adlearn.models import available_models, get_model_class

    for name in available_models():
        if not args.presets:
            print(name)
            continue
        presets = get_model_class(name).presets
        print(f"{name}:")
        for preset in sorted(set(presets) | {"paper"}):
            options = ", ".join(f"{k}={v!r}" for k, v in presets.get(preset, {}).items()) or "the defaults"
            print(f"  {preset:6s} {options}")
    return 0


def cmd_evaluate(args) -> int:
    from adlearn.options import parse_set
    from adlearn.plotting import metrics_table

    results = run_evaluation(args.model, args, parse_set(args.set))
    print(metrics_table([results]))
    if results.get("threshold") is not None:
        print(
            f"at the threshold {results['threshold']:.6g} (at most {results['false_alarm_rate_target']:.1%} of "
            f"{results['n_threshold_images']} held-out normal images rejected): recall "
            f"{results['image_recall_at_threshold']:.3f}, false alarms {results['image_false_alarm_rate_at_threshold']:.3f}, "
            f"precision {results['image_precision_at_threshold']:.3f}, F1 {results['image_f1_at_threshold']:.3f} "
            f"(F1-max, its threshold chosen on the test labels: {results.get('image_f1max', float('nan')):.3f})"
        )
    if results.get("note"):
        print(f"note: {results['note']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def cmd_demo(args) -> int:
    """Fit each demo model on every synthetic category; print one table; write one figure each."""
    from adlearn.data import SYNTHETIC_CATEGORIES
    from adlearn.models import available_models
    from adlearn.options import describe_preset, not_applied, parse_set
    from adlearn.plotting import metrics_table

    models = [m for m in args.models.split(",") if m]
    missing = [m for m in models if m not in available_models()]
    if missing:
        raise SystemExit(f"unknown model(s) {missing}; available: {', '.join(available_models())}")
    options = demo_options(args)
    print(describe_preset(models, _preset(args)), file=sys.stderr)
    for key, lacking in not_applied(models, run_options(args, parse_set(args.set))).items():
        print(f"{key}: not an option of {', '.join(lacking)}, which run without it", file=sys.stderr)
    out = Path(args.out)
    rows = []
    for model_name in models:
        for category in SYNTHETIC_CATEGORIES:
            args.figure = str(out / f"{model_name}_{category}.png")
            args.root, args.category = None, category
            rows.append(run_evaluation(model_name, args, {}, category, options=options[model_name]))
    print(metrics_table(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(f"figures and results.json in {out}/")
    return 0


def cmd_data_synth(args) -> int:
    from adlearn.data import synth_command

    synth_command(args.root, category=args.category, image_size=args.image_size, seed=args.seed)
    return 0


def cmd_export(args) -> int:
    """Export a saved model (``model.save``) to ONNX / OpenVINO (`adlearn.export.export`)."""
    from adlearn.export import export
    from adlearn.models import load

    model = load(args.model, device="cpu")
    out = export(
        model, args.out, format=args.format, threshold=args.threshold, normal=args.normal, quantile=args.quantile
    )
    manifest = json.loads((out / "adlearn_export.json").read_text())
    threshold = manifest["threshold"]
    print(
        f"{model.name} exported to {out}/ ({', '.join(manifest['files'].values())}); threshold: "
        + (
            f"{threshold:.6g} ({manifest['threshold_source']})"
            if threshold is not None
            else "none (predict leaves labels empty)"
        )
    )
    return 0


def cmd_predict(args) -> int:
    """Score images with a saved model or an export folder: a CSV of scores and labels, PNG overlays."""
    from adlearn.deploy import predict_folder
    from adlearn.export import load_runner

    runner = load_runner(args.model, runtime=args.runtime, threshold=args.threshold, threads=args.threads)
    result = predict_folder(runner, args.images, args.out, batch_size=args.batch_size, overlays=not args.no_overlays)
    scored = sum(1 for row in result.rows if row["score"] != "")
    failed = [row for row in result.rows if row["error"]]
    print(
        f"{runner.name}: scored {scored} image(s), wrote {result.csv}"
        + (f" and {result.overlays}/" if result.overlays else "")
    )
    if runner.threshold is None:
        print("no threshold: the label column is empty; give --threshold, or export with --normal DIR", file=sys.stderr)
    for row in failed:
        print(f"could not read {row['path']}: {row['error']}", file=sys.stderr)
    return 1 if failed and not scored else 0


def _add_run_options(parser, default_preset=None) -> None:
    parser.add_argument(
        "--preset",
        default=default_preset,
        help="a named recipe: 'cpu' (offline backbones, a 2-core laptop on a real category), 'paper', or 'none' "
        f"(the model's defaults); explicit options override it; adlearn models --presets lists them "
        f"(default: {default_preset or 'none'})",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="input size (default: the model's or its preset's)"
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help=f"timm backbone (default: the preset's, else the model's; '{OFFLINE_BACKBONE}' has offline weights)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="auto (offline package, else hub) | hub | none | PATH to a state dict (default: the model's, auto)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)


def _add_set_option(parser, text: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adlearn", description="Visual anomaly detection, readably re-implemented.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the registered models")
    models.add_argument("--presets", action="store_true", help="also list each model's presets and their options")
    models.set_defaults(func=cmd_models)

    evaluate = sub.add_parser("evaluate", help="fit a model and report its metrics")
    evaluate.add_argument("model")
    evaluate.add_argument(
        "--root",
        help="MVTec-layout root (default: the embedded synthetic dataset); for a video model (ai_vad) a UCSD Ped2 "
        "or Avenue folder (default: the embedded synthetic surveillance videos)",
    )
    evaluate.add_argument(
        "--video-format", choices=("ucsd", "avenue"), default="ucsd", help="video models: the layout of --root"
    )
    evaluate.add_argument("--category")
    _add_run_options(evaluate)
    _add_set_option(
        evaluate, "a model option, e.g. --set n_features=100 (repeatable; an option the model lacks is an error)"
    )
    evaluate.add_argument("--json", help="write the results as one JSON object")
    evaluate.add_argument("--figure", help="write an anomaly-map figure (PNG)")
    evaluate.add_argument("--save", help="save the fitted model")
    evaluate.add_argument(
        "--false-alarm-rate",
        type=float,
        metavar="RATE",
        help="also report recall, false alarms, precision and F1 at the threshold that rejects at most RATE of "
        "normal images held out of training (e.g. 0.01), chosen without any test label",
    )
    evaluate.add_argument(
        "--threshold-fraction",
        type=float,
        default=0.2,
        help="with --false-alarm-rate: the fraction of training images held out to set the threshold (default 0.2)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="fit the demo models on the synthetic data: table + figures")
    demo.add_argument("--models", default="padim")
    demo.add_argument("--out", default="adlearn_results")
    _add_run_options(demo, default_preset="cpu")
    _add_set_option(
        demo,
        "a model option (repeatable): a plain KEY goes to the models that have it (the others are named), "
        "MODEL.KEY=VALUE to one, e.g. --set padim.n_features=50",
    )
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the synthetic dataset in the MVTec layout")
    synth.add_argument("--root", required=True)
    synth.add_argument("--category", default="all")
    synth.add_argument("--image-size", type=int, default=256)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_data_synth)

    export = sub.add_parser("export", help="export a saved model to ONNX / OpenVINO (one graph, pixels to scores)")
    export.add_argument("model", help="a saved model (model.save, adlearn evaluate --save)")
    export.add_argument("--format", default="onnx", help="onnx | openvino | onnx,openvino (default: onnx)")
    export.add_argument("--out", required=True, help="the export folder (graph + adlearn_export.json)")
    export.add_argument("--threshold", type=float, default=None, help="the label threshold the export carries")
    export.add_argument(
        "--normal",
        default=None,
        help="a folder of held-out normal images (not the training ones): their largest score (--quantile) "
        "becomes the threshold; without --threshold or --normal, the saved model's own threshold, if any",
    )
    export.add_argument("--quantile", type=float, default=1.0, help="quantile of the --normal scores (default 1.0)")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="score images with a saved model or an export folder: CSV + overlays")
    predict.add_argument("model", help="a saved model (.pt) or an export folder (adlearn export)")
    predict.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--out", required=True, help="folder for predictions.csv and overlays/")
    predict.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    predict.add_argument("--runtime", default="auto", help="export folders: auto | onnxruntime | openvino")
    predict.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's choice)")
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--no-overlays", action="store_true", help="write the CSV only")
    predict.set_defaults(func=cmd_predict)

    from adlearn import benchmark, sweep  # their own modules: `adlearn benchmark`, `adlearn sweep`

    benchmark.add_parser(sub)
    sweep.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        # Bad input and missing weights end with the message, not a traceback.
        from adlearn.components.feature_extractors.backbones import PretrainedWeightsError

        if isinstance(error, (ValueError, PretrainedWeightsError, FileNotFoundError)) or "CUDA" in str(error):
            print(f"adlearn: error: {error}", file=sys.stderr)
            return 2
        raise
