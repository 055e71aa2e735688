"""Do our EfficientAD and anomalib 2.7's compute the same function? The same weights and inputs on both
sides, every deterministic piece compared.

    ADLEARN_MVTEC_ROOT=... .venv/bin/python benchmarks/archive/check_efficient_ad_equivalence.py --json build/bench/effad_eq.json

Why: `bench_efficient_ad.py --accuracy` compares the two libraries after training, where each side's
random streams (initial weights, image order, colour changes, penalty images, dropout) differ, so a
difference of 0.01 in AUROC cannot say whether the code differs or the draws do. Here nothing is drawn:
our freshly initialised student and autoencoder, and our distilled teacher (``--teacher``, default the
cached one; a random PDN when none is cached), are copied into anomalib's networks (the autoencoder's
parameters renamed: ``encoder.0…4, bottleneck`` → ``enconv1…6``, ``decoder.0…5, head.0, head.2`` →
``deconv1…8``), and both sides get the same [0, 1] images (``--images`` training and test images of the
real bottle, or random images without ``--root``), the same colour change (saturation × 1.13 — the
reference draws one of three changes and a factor) and the same natural image for the penalty. Each side
then runs *its own* code:

1. the teacher's channel statistics over the training images (ours: ``teacher_channel_statistics``,
   float64 sums; anomalib: ``teacher_channel_mean_std``, float32 sums);
2. the raw maps M_ST and M_AE (padded, upsampled) of the test images, eval mode, both sides using our
   statistics (so that step 1's difference does not carry over);
3. the 0.9 / 0.995 quantiles of those maps (ours: `exact_quantile`; anomalib: ``torch.quantile`` after
   its 2²⁴-element subsampling, which does not trigger at this size);
4. the normalised map and the image score, both sides using our quantiles;
5. one training step's three losses on one training image, and their gradients with respect to every
   student and autoencoder parameter — with dropout off (the autoencoder's only random layer: its masks
   cannot be matched across two implementations);
6. the parameters after one step of each side's Adam, built as each side builds it (its own learning rate
   and weight decay), both stepping from *our* gradients (Adam's first step is lr · g / (|g| + ε): it
   would turn step 5's last-digit differences on gradients near ε = 1e-8 into visible ones), reported as
   the largest difference of the update in units of the learning rate.

Each comparison reports the largest absolute difference and the largest magnitude on our side; a piece
*agrees* when the difference is under ``--rtol`` (default 1e-4) times that magnitude. Float32 sums taken
in another order differ at about 1e-7 relative. What this check cannot see is listed in
docs/log/2026-12-06-benchmarks-history.md next to its result (the random streams, the penalty images' geometry, the learning
rate decay).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common
from _common import REPO_ROOT, anomalib_python, mvtec_root, write_json  # noqa: E402

SIZE = 256  # the only size anomalib's autoencoder takes
COLOUR_CHANGE = ("saturation", 1.13)


def autoencoder_names() -> dict[str, str]:
    """Our autoencoder's module names → anomalib's ``AutoEncoder``'s."""
    names = {f"encoder.{i}": f"encoder.enconv{i + 1}" for i in range(5)}
    names["bottleneck"] = "encoder.enconv6"
    names.update({f"decoder.{i}": f"decoder.deconv{i + 1}" for i in range(6)})
    names.update({"head.0": "decoder.deconv7", "head.2": "decoder.deconv8"})
    return names


def reference_name(name: str) -> str:
    """``student.conv1.weight`` stays; ``autoencoder.head.2.bias`` → ``ae.decoder.deconv8.bias``."""
    if not name.startswith("autoencoder."):
        return name
    module, _, leaf = name[len("autoencoder.") :].rpartition(".")
    return f"ae.{autoencoder_names()[module]}.{leaf}"


# ----------------------------------------------------------------------------- the inputs
def shared_inputs(root: str | None, category: str, count: int, seed: int) -> dict:
    """[0, 1] training images, test images (normal and defective), one natural image."""
    sys.path.insert(0, str(REPO_ROOT))
    from adlearn.data import ImageTransform, MVTecDataset, NaturalImageCrops

    if root:
        transform = ImageTransform(SIZE)

        def unit(split: str, pick) -> torch.Tensor:
            data = MVTecDataset(root, category, split, transform=transform)
            indices = pick(data)
            return torch.stack([transform.denormalize(data[i]["image"]) for i in indices]).clamp(0, 1)

        train = unit("train", lambda data: range(0, len(data), max(1, len(data) // count))[:count])

        def normal_and_defective(data):
            good = [i for i, label in enumerate(data.labels) if label == 0][: count // 2]
            bad = [i for i, label in enumerate(data.labels) if label == 1][: count - count // 2]
            return good + bad

        test = unit("test", normal_and_defective)
        source = f"{category} from {root}: {len(train)} training, {len(test)} test images"
    else:
        generator = torch.Generator().manual_seed(seed)
        train = torch.rand(count, 3, SIZE, SIZE, generator=generator)
        test = torch.rand(count, 3, SIZE, SIZE, generator=generator)
        source = f"{count} + {count} random images"
    natural = NaturalImageCrops(SIZE, seed=seed, normalize=False).sample(1)
    return {"train": train, "test": test, "natural": natural, "source": source}


# ----------------------------------------------------------------------------- our side
def our_side(inputs: dict, teacher: str | None, seed: int) -> tuple[dict, dict]:
    """Our model's outputs, and the weights and statistics anomalib's side is given."""
    sys.path.insert(0, str(REPO_ROOT))
    import adlearn.models.efficient_ad as effad
    from adlearn.data.transforms import normalize
    from adlearn.models import create
    from adlearn.models.common import exact_quantile

    model = create(
        "efficient_ad", image_size=SIZE, device="cpu", seed=seed, teacher_weights=teacher if teacher else "none"
    )
    model.prepare_teacher()
    train, test, natural = (normalize(inputs[key]) for key in ("train", "test", "natural"))
    out: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        model.teacher_channel_statistics(train)  # 1
        out["teacher_mean"], out["teacher_std"] = model.teacher_mean.clone(), model.teacher_std.clone()
        map_st, map_ae = model.raw_maps(test)  # 2, (B, 1, H, W) each
        out["map_st"], out["map_ae"] = map_st, map_ae
        low, high = model.map_quantile_levels  # 3
        out["quantiles"] = torch.stack(
            [
                exact_quantile(map_st.flatten(), low),
                exact_quantile(map_st.flatten(), high),
                exact_quantile(map_ae.flatten(), low),
                exact_quantile(map_ae.flatten(), high),
            ]
        )
        model.quantiles.copy_(out["quantiles"])
        prediction = model.predict_step(test)  # 4 (predict without fit)
        out["anomaly_map"], out["score"] = prediction.anomaly_map, prediction.pred_score

    # 5: the fixed colour change in place of the random one, the fixed natural image in place of the stream
    kind, factor = COLOUR_CHANGE
    mean = torch.tensor(effad.IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(effad.IMAGENET_STD)[None, :, None, None]
    original = effad.random_color_change
    effad.random_color_change = lambda images, generator=None: (
        (effad.adjust_color(images * std + mean, kind, factor) - mean) / std
    )
    model._generator = None  # unused by the fixed change
    model._natural = type("Fixed", (), {"sample": staticmethod(lambda n: natural.repeat(n, 1, 1, 1))})()
    try:
        losses = model.losses(train[:1])  # eval: dropout off
    finally:
        effad.random_color_change = original
    for key, reference_key in (
        ("student", "loss_st"),
        ("autoencoder", "loss_ae"),
        ("student_autoencoder", "loss_stae"),
    ):
        out[reference_key] = losses[key].detach()
    optimizer, _ = model.configure_optimizers()
    optimizer.zero_grad()
    losses["loss"].backward()
    trained = [(name, p) for name, p in model.named_parameters() if name.startswith(("student.", "autoencoder."))]
    for name, parameter in trained:
        out[f"grad/{reference_name(name)}"] = parameter.grad.clone()
    before = {name: parameter.detach().clone() for name, parameter in trained}
    optimizer.step()  # 6
    for name, parameter in trained:
        out[f"update/{reference_name(name)}"] = (parameter.detach() - before[name]) / model.lr
    given = {
        "teacher": model.teacher.state_dict(),
        "grads": {k[len("grad/") :]: v for k, v in out.items() if k.startswith("grad/")},
        "student": {k: v for k, v in before.items() if k.startswith("student.")},
        "autoencoder": {reference_name(k)[len("ae.") :]: v for k, v in before.items() if k.startswith("autoencoder.")},
        "teacher_mean": out["teacher_mean"],
        "teacher_std": out["teacher_std"],
        "quantiles": out["quantiles"],
        "lr": model.lr,
        "weight_decay": model.weight_decay,
    }
    return out, given


# ----------------------------------------------------------------------------- anomalib's side (its venv)
def anomalib_side(spec_path: str, out_path: str) -> int:
    """In anomalib's venv: its ``EfficientAd`` (small) given our weights, fed the same tensors."""
    import logging
    import warnings
    from types import SimpleNamespace

    import torchvision.transforms.v2.functional as TF
    from anomalib.models import EfficientAd

    warnings.filterwarnings("ignore")
    logging.getLogger("anomalib").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    spec = torch.load(spec_path, weights_only=False)
    module = EfficientAd(model_size="small", visualizer=False)
    model = module.model
    model.teacher.load_state_dict(spec["teacher"])
    model.student.load_state_dict({k[len("student.") :]: v for k, v in spec["student"].items()})
    model.ae.load_state_dict(spec["autoencoder"])
    out: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        batches = [SimpleNamespace(image=image[None]) for image in spec["train"]]
        statistics = module.teacher_channel_mean_std(batches)  # 1
        out["teacher_mean"], out["teacher_std"] = statistics["mean"], statistics["std"]
        model.mean_std["mean"].data.copy_(spec["teacher_mean"])  # ours, for what follows
        model.mean_std["std"].data.copy_(spec["teacher_std"])
        map_st, map_ae = model.get_maps(spec["test"], normalize=False)  # 2
        out["map_st"], out["map_ae"] = map_st, map_ae
        qa_st, qb_st = module._get_quantiles_of_maps([map_st])  # 3
        qa_ae, qb_ae = module._get_quantiles_of_maps([map_ae])
        out["quantiles"] = torch.stack([qa_st, qb_st, qa_ae, qb_ae])
        for key, value in zip(("qa_st", "qb_st", "qa_ae", "qb_ae"), spec["quantiles"]):  # ours, for what follows
            model.quantiles[key].data.copy_(value)
        prediction = model(spec["test"])  # 4
        out["anomaly_map"], out["score"] = prediction.anomaly_map[:, 0], prediction.pred_score.flatten()

    kind, factor = spec["colour_change"]  # 5
    model.choose_random_aug_image = lambda image: getattr(TF, f"adjust_{kind}")(image, factor)
    image = spec["train"][:1]
    _, distance_st = model.compute_student_teacher_distance(image)
    loss_st, loss_ae, loss_stae = model.compute_losses(image, spec["natural"], distance_st)
    out.update(loss_st=loss_st.detach(), loss_ae=loss_ae.detach(), loss_stae=loss_stae.detach())
    parameters = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(
        parameters, lr=module.lr, weight_decay=module.weight_decay
    )  # its configure_optimizers'
    optimizer.zero_grad()
    (loss_st + loss_ae + loss_stae).backward()
    trained = [(name, p) for name, p in model.named_parameters() if name.startswith(("student.", "ae."))]
    for name, parameter in trained:
        out[f"grad/{name}"] = parameter.grad.clone()
        parameter.grad.copy_(spec["grads"][name])  # 6 from our gradients: the optimizers alone compared
    before = {name: parameter.detach().clone() for name, parameter in trained}
    optimizer.step()  # 6
    for name, parameter in trained:
        out[f"update/{name}"] = (parameter.detach() - before[name]) / module.lr
    out["lr"], out["weight_decay"] = torch.tensor(module.lr), torch.tensor(module.weight_decay)
    torch.save(out, out_path)
    return 0


# ----------------------------------------------------------------------------- comparison
GROUPS = (
    ("1. teacher channel mean", ("teacher_mean",)),
    ("1. teacher channel std", ("teacher_std",)),
    ("2. raw map M_ST", ("map_st",)),
    ("2. raw map M_AE", ("map_ae",)),
    ("3. map quantiles (4)", ("quantiles",)),
    ("4. normalised map", ("anomaly_map",)),
    ("4. image score", ("score",)),
    ("5. loss L_ST (hard + penalty)", ("loss_st",)),
    ("5. loss L_AE", ("loss_ae",)),
    ("5. loss L_STAE", ("loss_stae",)),
    ("5. gradients, student", ("grad/student.",)),
    ("5. gradients, autoencoder", ("grad/ae.",)),
    ("6. Adam update / lr, student", ("update/student.",)),
    ("6. Adam update / lr, autoencoder", ("update/ae.",)),
)


def compare(ours: dict, theirs: dict, rtol: float) -> list[dict]:
    rows = []
    for label, prefixes in GROUPS:
        keys = [key for key in ours if key.startswith(prefixes) and (key in prefixes or "/" in key)]
        missing = [key for key in keys if key not in theirs]
        if not keys or missing:
            raise KeyError(f"{label}: keys missing on anomalib's side: {missing or prefixes}")
        difference = max(
            float((ours[k].double() - theirs[k].double().reshape(ours[k].shape)).abs().max()) for k in keys
        )
        scale = max(float(ours[k].double().abs().max()) for k in keys)
        rows.append(
            {
                "piece": label,
                "tensors": len(keys),
                "max_abs_difference": difference,
                "max_magnitude": scale,
                "relative": difference / scale if scale else difference,
                "agrees": difference <= rtol * scale,
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        help="MVTec-layout root (default $ADLEARN_MVTEC_ROOT; random images without either)",
    )
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--images", type=int, default=4, help="training images and test images (half defective)")
    parser.add_argument("--teacher", help="PDN weights (default: the cached distilled teacher, else a random PDN)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--anomalib-python", help="anomalib's venv python (default: $ANOMALIB_PYTHON)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--side", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return anomalib_side(*args.side)

    args.anomalib_python = anomalib_python(args.anomalib_python)
    root = mvtec_root(args.root, required=False)
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO_ROOT))
    from adlearn.models.efficient_ad_teacher import default_teacher_path

    teacher = args.teacher or (str(default_teacher_path("small")) if default_teacher_path("small").is_file() else None)
    inputs = shared_inputs(root and str(root), args.category, args.images, args.seed)
    ours, given = our_side(inputs, teacher, args.seed)
    with tempfile.TemporaryDirectory(prefix="effad-equivalence-") as tmp:
        spec, out = Path(tmp) / "spec.pt", Path(tmp) / "anomalib.pt"
        torch.save(
            {**given, **{k: inputs[k] for k in ("train", "test", "natural")}, "colour_change": COLOUR_CHANGE}, spec
        )
        run = subprocess.run(
            [args.anomalib_python, __file__, "--side", str(spec), str(out)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if run.returncode:
            raise SystemExit(f"anomalib's side failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
        theirs = torch.load(out, weights_only=False)
    rows = compare(ours, theirs, args.rtol)
    print(f"inputs: {inputs['source']}; teacher: {Path(teacher).name if teacher else 'random PDN'}")
    print(
        f"hyper-parameters: lr {given['lr']} / {float(theirs['lr'])}, weight decay {given['weight_decay']} / "
        f"{float(theirs['weight_decay'])} (ours / anomalib's)"
    )
    print(f"{'piece':34s} {'tensors':>7s} {'max |diff|':>11s} {'max |ours|':>11s} {'relative':>9s}  agrees")
    for row in rows:
        print(
            f"{row['piece']:34s} {row['tensors']:7d} {row['max_abs_difference']:11.3e} {row['max_magnitude']:11.3e} "
            f"{row['relative']:9.1e}  {'yes' if row['agrees'] else 'NO'}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "inputs": inputs["source"],
                "teacher": Path(teacher).name if teacher else None,
                "rtol": args.rtol,
                "rows": rows,
            },
            indent=1,
        )
    return 0 if all(row["agrees"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
