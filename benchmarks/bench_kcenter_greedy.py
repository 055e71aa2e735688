"""Benchmark: adlearn's `KCenterGreedy` vs anomalib 2.7's coreset loop (PatchCore's bottleneck).

PatchCore subsamples its memory bank of patch features (≈123k patches for ~160 training images at
28×28) to 10 % with greedy k-center selection. anomalib's loop recomputes ``‖x − c‖`` for every
point with a fresh (N, d) temporary each of its ~12k steps: ~850 s on 2 CPU cores.

What this script runs, on a random-but-clustered, PatchCore-like embedding (a Zipf-sized mixture
of Gaussian clusters in a 32-d latent space, pushed through a random linear map and a ReLU, plus
noise; its spread matches real bottle features, see `patchcore_like_embedding`) at realistic
widths — efficientnet_lite0 blocks.2+blocks.4 = 40+112 = 152 and resnet18 layer2+layer3 =
128+256 = 384:

1. **Full size** (``--n``, default 123,000 rows → 10 %): our ``KCenterGreedy`` (defaults) timed
   end to end; the baseline timed on its projection plus ``--baseline-steps`` loop steps and
   extrapolated linearly (each baseline step does the same O(N·d) work, so this is accurate;
   ``--full-baseline`` runs it to the end instead — ~15 min per width).
2. **Coverage** (``--coverage-n``, default 20,000 rows → 10 %): both run to the end; their
   coverage radii ``max_i min_c ‖x_i − c‖`` (in the original feature space) and that of a random
   subset of the same size are printed, with the fully measured time ratio at that size.

The baseline is our own re-implementation of anomalib 2.7's algorithm (not its code):
``SparseRandomProjection(eps=0.9)`` built row by row, a random start point (included, as in 2.7),
then per step ``torch.linalg.norm(features - center, dim=1, keepdim=True)``, ``torch.minimum``,
``torch.max`` and a ``scatter_`` of 0 at the new centre. If anomalib's own venv exists
(``--anomalib-python``, else ``ANOMALIB_PYTHON``; none given: skipped), its real
``KCenterGreedy`` is timed the same way (a short run, extrapolated) as a check of the baseline.

Data (``--data``, default all three): ``clustered`` (above), ``gaussian`` (``--gaussian-n`` 30k ×
``--gaussian-width`` 384 standard normal: the worst case for pruning) and ``real`` (PatchCore's
efficientnet_lite0 patch features of the first 40, 120 and 209 training images of bottle = 40k, 122k and
214k rows, from ``--mvtec-root`` / ``ADLEARN_MVTEC_ROOT``; skipped without it). Each of our methods in
``--methods`` (default adaptive, pruned, dense) is timed, with the number of dense and pruned steps it
took, so the table shows the regime where each wins and that "adaptive" follows the better one.

The machine and the load around every timed part are recorded (`adlearn.machine`); a speed-up
measured while other processes used the CPU is not reported unless ``--allow-busy`` is given.

    .venv/bin/python benchmarks/bench_kcenter_greedy.py --json build/bench/kcenter.json   # idle machine
    .venv/bin/python benchmarks/bench_kcenter_greedy.py --data gaussian --methods adaptive,dense

Wall and CPU (process) time are both printed: on a shared, oversubscribed machine wall time
swings a lot (multi-threaded loops suffer most), CPU time less so.

Measured before the load rule and the adaptive method (pruned only; 2 threads, on 2 CPU cores shared
with other jobs: load average 8–13, so wall times are inflated several-fold and noisy; to be replaced
by an idle run of the command above):

=====================  ==================  =======================  ================  ============
N × D → centres        adlearn             baseline (extrapolated)  speed-up          anomalib 2.7
=====================  ==================  =======================  ================  ============
123k × 152 → 12.3k     21.9 s CPU / 70 s   1635 s CPU / 7339 s      75× CPU / 105×    611 ms/step
123k × 384 → 12.3k     56.7 s CPU / 329 s  1715 s CPU / 2933 s      30× CPU / 8.9×    185 ms/step
=====================  ==================  =======================  ================  ============

(wall figures after the slash; 384-d: ours selects on the JL width 289, like the baseline;
152-d: ours skips the widening projection.) Earlier, on a quieter machine, one baseline step at
123k × 289 took 63 ms (→ ~780 s for 12.3k centres, in line with the ~850 s quoted for anomalib)
while ours took ~17 s on real 123k × 152 bottle features. Coverage radius at 20k rows → 2k
centres (both run to the end): 152-d adlearn 4.27 vs baseline 4.63 (random subset 19.1); 384-d
7.73 vs 7.40 (random 29.0) — the same quality; the 384-d gap is the luck of the two random
projections.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, anomalib_python, clock, mvtec_root, since, write_json  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
from adlearn.components.kcenter_greedy import KCenterGreedy, coverage_radius  # noqa: E402
from adlearn.components.random_projection import johnson_lindenstrauss_min_dim  # noqa: E402
from adlearn.machine import add_arguments, describe, guard_from_args  # noqa: E402


# ----------------------------------------------------------------------------- data
def patchcore_like_embedding(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """Clustered, non-negative features ``(n, width)`` with a few big and many small clusters.

    A Zipf-sized mixture of 512 Gaussian clusters in a 32-d latent space whose axis scales decay
    like i^-0.9, mapped linearly to ``width`` dims, ReLU'd, plus uniform noise. The constants were
    chosen to match two statistics of real PatchCore features (MVTec bottle, efficientnet_lite0
    blocks.2+blocks.4, 152-d): 90 % of the variance in 17 principal components (real: 17), and
    median nearest-neighbour / median pairwise distance 0.136 (real: 0.135). Isotropic clusters
    (no decay) are far "higher-dimensional" than real features and make any method look worse.
    """
    g = torch.Generator().manual_seed(seed)
    latent_dim, n_clusters = 32, 512
    sizes = 1.0 / torch.arange(1, n_clusters + 1, dtype=torch.float64)  # Zipf weights
    labels = torch.multinomial(sizes, n, replacement=True, generator=g)  # (n,)
    axis_scale = torch.arange(1, latent_dim + 1, dtype=torch.float32) ** -0.9  # (latent,)
    centres = torch.randn(n_clusters, latent_dim, generator=g) * 10.0 * axis_scale
    spreads = torch.exp(torch.randn(n_clusters, generator=g) * 0.5)  # cluster sizes vary
    mixing = torch.randn(latent_dim, width, generator=g) / math.sqrt(latent_dim)
    out = torch.empty(n, width)
    for start in range(0, n, 16384):  # bounded memory
        lab = labels[start : start + 16384]
        noise = torch.randn(len(lab), latent_dim, generator=g) * spreads[lab, None] * axis_scale
        z = centres[lab] + noise  # (b, latent)
        out[start : start + 16384] = torch.relu(z @ mixing) + 0.5 * torch.rand(len(lab), width, generator=g)
    return out


# ----------------------------------------------------------------------------- baseline
def baseline_projection(embedding: torch.Tensor, eps: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Sparse random projection built the reference way: one row at a time."""
    rng = np.random.default_rng(seed)
    n, d = embedding.shape
    k = johnson_lindenstrauss_min_dim(n, eps)
    density = 1 / math.sqrt(d)
    matrix = torch.zeros(k, d)
    for row in range(k):
        nnz = rng.binomial(d, density)
        columns = rng.choice(d, size=nnz, replace=False)
        matrix[row, columns] = torch.from_numpy(rng.integers(0, 2, nnz) * 2.0 - 1.0).float()
    matrix *= math.sqrt(1 / density) / math.sqrt(k)
    return embedding @ matrix.T  # (n, k)


def baseline_select(
    features: torch.Tensor, coreset_size: int, seed: int = 0, max_steps: int | None = None
) -> list[int]:
    """anomalib 2.7's greedy loop: full (N, d) difference and norm every step."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(features.shape[0], (1,), generator=g).squeeze()
    selected = [idx]
    min_distances = None
    steps = coreset_size - 1 if max_steps is None else min(max_steps, coreset_size - 1)
    for _ in range(steps):
        distances = torch.linalg.norm(features - features[idx], ord=2, dim=1, keepdim=True)  # (N, 1)
        min_distances = distances if min_distances is None else torch.minimum(min_distances, distances)
        _, idx = torch.max(min_distances.squeeze(1), dim=0)
        min_distances.scatter_(0, idx.view(1, 1), 0.0)
        selected.append(idx)
    return torch.stack(selected).tolist()


def time_baseline(embedding: torch.Tensor, ratio: float, steps: int | None) -> dict:
    coreset_size = int(embedding.shape[0] * ratio)
    start = clock()
    features = baseline_projection(embedding)
    projection_s, projection_cpu = since(start)
    start = clock()
    idxs = baseline_select(features, coreset_size, max_steps=steps)
    loop_s, loop_cpu = since(start)
    done = len(idxs) - 1
    scale = (coreset_size - 1) / max(done, 1)  # extrapolation factor (1 when run to the end)
    return {
        "projection_s": projection_s,
        "steps_run": done,
        "per_step_ms": loop_s / max(done, 1) * 1e3,
        "total_s": projection_s + loop_s * scale,
        "cpu_s": projection_cpu + loop_cpu * scale,
        "extrapolated": done < coreset_size - 1,
        "idxs": idxs,
        "selection_dim": features.shape[1],
    }


ANOMALIB_SNIPPET = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection
from anomalib.models.components.sampling import KCenterGreedy
embedding = torch.load(sys.argv[1])
steps = int(sys.argv[2])
start = time.perf_counter()       # the projection alone, to subtract from the timed call below
SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
projection = time.perf_counter() - start
sampler = KCenterGreedy(embedding, sampling_ratio=(steps + 1.5) / embedding.shape[0])
start = time.perf_counter()
sampler.select_coreset_idxs()
print("ANOMALIB_SECONDS", time.perf_counter() - start - projection, sampler.coreset_size, projection)
"""


def time_real_anomalib(python: str, embedding: torch.Tensor, steps: int, threads: int) -> dict | None:
    """Run anomalib's own KCenterGreedy for ~``steps`` steps in its venv (None if unavailable)."""
    if python is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embedding.pt"
        torch.save(embedding, path)
        run = subprocess.run(
            [python, "-c", ANOMALIB_SNIPPET, str(path), str(steps), str(threads)],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
    for line in run.stdout.splitlines():
        if line.startswith("ANOMALIB_SECONDS"):
            _, seconds, size, projection = line.split()
            return {
                "loop_s": float(seconds),
                "steps": int(size) - 1,
                "projection_s": float(projection),
                "per_step_ms": float(seconds) / max(int(size) - 1, 1) * 1e3,
            }
    print(f"  (anomalib run failed: {run.stderr.strip().splitlines()[-1:]})")
    return None


# ----------------------------------------------------------------------------- real features
def real_patch_features(root: Path, category: str, n_images: int) -> torch.Tensor:
    """PatchCore's training patch features (efficientnet_lite0 blocks.2+blocks.4, 152-d, 32×32 per
    256-px image, PatchCore's default input: 1 024 rows per image) of the first ``n_images`` training
    images, before the coreset."""
    from adlearn.data import MVTecDataset
    from adlearn.models import create

    model = create("patchcore", backbone="efficientnet_lite0", pretrained="auto", device="cpu")
    train = MVTecDataset(root, category, split="train", transform=model.transform)
    n_images = min(n_images, len(train))
    images = torch.stack([train[i]["image"] for i in range(n_images)])
    model.to_device().eval()
    with torch.no_grad():
        return torch.cat([model.collect(batch) for batch in images.split(16)])  # (n_images·1024, 152)


def datasets(args) -> list[tuple[str, torch.Tensor]]:
    """(name, embedding) for every data kind asked for in ``--data``."""
    kinds = [k.strip() for k in args.data.split(",") if k.strip()]
    out = []
    for kind in kinds:
        if kind == "clustered":
            out += [
                (f"clustered {args.n // 1000}k x {w}", patchcore_like_embedding(args.n, w, seed=w))
                for w in (int(w) for w in args.widths.split(","))
            ]
        elif kind == "gaussian":
            g = torch.Generator().manual_seed(0)
            out.append(
                (
                    f"gaussian {args.gaussian_n // 1000}k x {args.gaussian_width}",
                    torch.randn(args.gaussian_n, args.gaussian_width, generator=g),
                )
            )
        elif kind == "real":
            root = mvtec_root(args.mvtec_root, required=False, flag="--mvtec-root")
            if root is None or not (root / args.category / "train").is_dir():
                print(f"  (real features skipped: no {args.category}/ under --mvtec-root / ADLEARN_MVTEC_ROOT)")
                continue
            for n_images in (int(n) for n in args.real_images.split(",")):
                features = real_patch_features(root, args.category, n_images)
                out.append(
                    (
                        f"real {args.category} {n_images} img = {features.shape[0] // 1000}k x {features.shape[1]}",
                        features,
                    )
                )
        else:
            raise SystemExit(f"--data: unknown kind {kind!r} (clustered, gaussian, real)")
    return out


# ----------------------------------------------------------------------------- ours
def time_ours(embedding: torch.Tensor, ratio: float, seed: int = 0, method: str = "auto") -> dict:
    start = clock()
    sampler = KCenterGreedy(embedding, sampling_ratio=ratio, random_state=seed, method=method)
    idxs = sampler.select_coreset_idxs()
    total_s, cpu_s = since(start)
    return {
        "total_s": total_s,
        "cpu_s": cpu_s,
        "idxs": idxs,
        "method": sampler.method,
        "steps": sampler.steps,
        "switches": sampler.switches,
        "selection_dim": sampler.features.shape[1],
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default="clustered,gaussian,real",
        help="comma-separated: clustered (PatchCore-like), gaussian (random), real (bottle features)",
    )
    parser.add_argument("--n", type=int, default=123_000, help="rows of the clustered data")
    parser.add_argument("--widths", default="152,384", help="widths of the clustered data, comma-separated")
    parser.add_argument("--gaussian-n", type=int, default=30_000)
    parser.add_argument("--gaussian-width", type=int, default=384)
    parser.add_argument("--mvtec-root", help="real: MVTec AD root (default: $ADLEARN_MVTEC_ROOT; none: skipped)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument(
        "--real-images",
        default="40,120,209",
        help="training images for the real features (1,024 rows each: 40k, 122k, 214k rows)",
    )
    parser.add_argument("--methods", default="adaptive,pruned,dense", help="our methods to time")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument(
        "--baseline-steps", type=int, default=150, help="baseline steps timed at full size (then extrapolated)"
    )
    parser.add_argument("--full-baseline", action="store_true", help="run the baseline to the end")
    parser.add_argument(
        "--coverage-n", type=int, default=20_000, help="rows for the coverage comparison on clustered data (0 skips it)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--anomalib-python",
        help="python of a venv with anomalib 2.7 (default: $ANOMALIB_PYTHON; '' or neither: skipped)",
    )
    parser.add_argument("--json", help="write all figures to this file")
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.anomalib_python = anomalib_python(args.anomalib_python, required=False)
    torch.set_num_threads(args.threads)
    guard = guard_from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = {"ratio": args.ratio, "threads": args.threads, "runs": []}

    print(f"KCenterGreedy benchmark: {args.threads} thread(s), ratio {args.ratio}; {describe()}")
    for name, embedding in datasets(args):
        n, width = embedding.shape
        coreset_size = int(n * args.ratio)
        print(f"\n== {name} -> {coreset_size:,} centres")
        run = {"data": name, "n": n, "width": width, "ours": {}}
        for method in methods:
            with guard.measure(f"{name}: adlearn {method}"):
                ours = time_ours(embedding, args.ratio, method=method)
            print(
                f"  adlearn {method:8s} (selects on d={ours['selection_dim']}): {ours['total_s']:7.1f} s wall, "
                f"{ours['cpu_s']:7.1f} s CPU; steps {ours['steps']}"
                + (
                    f", switches {ours['switches'][:4]}{' ...' if len(ours['switches']) > 4 else ''}"
                    if ours["switches"]
                    else ""
                )
            )
            run["ours"][method] = {k: v for k, v in ours.items() if k != "idxs"}
        with guard.measure(f"{name}: baseline"):
            base = time_baseline(embedding, args.ratio, None if args.full_baseline else args.baseline_steps)
        how = f"extrapolated from {base['steps_run']} steps" if base["extrapolated"] else "measured"
        print(
            f"  baseline (anomalib 2.7 loop, d={base['selection_dim']}): {base['total_s']:7.1f} s wall, "
            f"{base['cpu_s']:7.1f} s CPU ({how}; {base['per_step_ms']:.1f} ms/step, projection "
            f"{base['projection_s']:.1f} s)"
        )
        run["baseline"] = {k: v for k, v in base.items() if k != "idxs"}
        for method, ours in run["ours"].items():
            wall = guard.ratio(base["total_s"], ours["total_s"], f"{name}: adlearn {method}", f"{name}: baseline")
            cpu = guard.ratio(base["cpu_s"], ours["cpu_s"], f"{name}: adlearn {method}", f"{name}: baseline")
            ours.update(speedup=wall, speedup_cpu=cpu)
            print(
                f"  speed-up {method:8s}: "
                + (
                    f"{wall:.1f}x wall, {cpu:.1f}x CPU time"
                    if wall
                    else "not reported (measured under load; --allow-busy reports it)"
                )
            )
        real = time_real_anomalib(args.anomalib_python, embedding, args.baseline_steps, args.threads)
        if real:
            estimate = real["projection_s"] + real["per_step_ms"] / 1e3 * (coreset_size - 1)
            print(
                f"  real anomalib: {real['per_step_ms']:.1f} ms/step over {real['steps']} steps "
                f"-> ~{estimate:.0f} s for {coreset_size:,} centres"
            )
            run["anomalib_per_step_ms"], run["anomalib_estimate_s"] = real["per_step_ms"], estimate
        del embedding

        if args.coverage_n and name.startswith("clustered"):
            small = patchcore_like_embedding(args.coverage_n, width, seed=width + 1)
            ours_small = time_ours(small, args.ratio)
            base_small = time_baseline(small, args.ratio, None)
            random_idxs = torch.randperm(args.coverage_n, generator=torch.Generator().manual_seed(0))
            size = len(ours_small["idxs"])
            radii = {
                "adlearn": coverage_radius(small, ours_small["idxs"]),
                "baseline": coverage_radius(small, base_small["idxs"]),
                "random": coverage_radius(small, random_idxs[:size]),
            }
            print(
                f"  coverage at N={args.coverage_n:,} ({size:,} centres, both run to the end): "
                f"radius adlearn {radii['adlearn']:.3f} | baseline {radii['baseline']:.3f} | "
                f"random subset {radii['random']:.3f}"
            )
            run["coverage"] = {"n": args.coverage_n, **radii}
        results["runs"].append(run)

    results["machine"] = guard.summary()
    if args.json:
        write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
