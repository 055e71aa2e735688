"""The benchmark drivers: the folder's README lists every one that stays and the archive's every one retired;
each starts (``--help``) with no data and no anomalib; their shared helper takes paths from a flag or the
environment only; and the drivers that need no anomalib run end to end on tiny data (CPU), so a GPU session
can trust them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ARCHIVE = BENCHMARKS / "archive"


def load_driver(name: str):
    """``name``: a file of benchmarks/ without ``.py`` (``archive/watch_training`` for an archived one)."""
    spec = importlib.util.spec_from_file_location(Path(name).name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_files(readme: Path) -> list[str]:
    """The file names in the first column of the Markdown table(s) of ``readme``: rows like ``| `x.py` | ...``."""
    return re.findall(r"^\| `([^`]+\.py)` \|", readme.read_text(), flags=re.MULTILINE)


# ----------------------------------------------------------------------------- the folder and its READMEs
def test_readme_lists_every_driver_that_stays_once():
    listed = table_files(BENCHMARKS / "README.md")
    assert len(listed) == len(set(listed)), "a driver is listed twice"
    assert set(listed) == {path.name for path in BENCHMARKS.glob("*.py")}


def test_archive_readme_lists_every_archived_driver_with_what_it_showed():
    readme = ARCHIVE / "README.md"
    listed = table_files(readme)
    assert set(listed) == {path.name for path in ARCHIVE.glob("*.py")} and len(listed) == len(set(listed))
    for row in re.findall(r"^\| `[^`]+\.py` \| (.*) \|$", readme.read_text(), flags=re.MULTILINE):
        assert len(row.split()) >= 8 and re.search(r"\d", row), f"no figure in the archive line: {row!r}"
    assert not set(listed) & {path.name for path in BENCHMARKS.glob("*.py")}  # archived = gone from the top


def test_no_driver_defaults_to_a_machine_path():
    for path in [*BENCHMARKS.glob("*.py"), *ARCHIVE.glob("*.py")]:
        assert "/work/" not in path.read_text(), f"{path.name} names a machine path"


DRIVERS = sorted(
    str(path.relative_to(BENCHMARKS))
    for path in [*BENCHMARKS.glob("*.py"), *ARCHIVE.glob("*.py")]
    if not path.name.startswith("_")
)


@pytest.mark.parametrize("driver", DRIVERS)
def test_each_driver_starts_without_data_or_anomalib(driver):
    """``--help`` from the repository root with neither ADLEARN_MVTEC_ROOT nor ANOMALIB_PYTHON set."""
    env = {k: v for k, v in os.environ.items() if k not in ("ADLEARN_MVTEC_ROOT", "ANOMALIB_PYTHON")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / driver), "--help"],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=BENCHMARKS.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")


# ----------------------------------------------------------------------------- _common.py
def test_mvtec_root_takes_the_flag_then_the_environment_else_names_both(monkeypatch, tmp_path):
    common = load_driver("_common")
    monkeypatch.setenv("ADLEARN_MVTEC_ROOT", str(tmp_path / "from_env"))
    assert common.mvtec_root(str(tmp_path / "from_flag")) == tmp_path / "from_flag"
    assert common.mvtec_root(None) == tmp_path / "from_env"
    monkeypatch.delenv("ADLEARN_MVTEC_ROOT")
    assert common.mvtec_root(None, required=False) is None
    with pytest.raises(SystemExit, match=r"--mvtec-root DIR or set ADLEARN_MVTEC_ROOT=DIR"):
        common.mvtec_root(None, flag="--mvtec-root")
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)
    assert common.mvtec_category(tmp_path, "bottle") == tmp_path / "bottle"
    with pytest.raises(SystemExit, match=r"no MVTec category at .*cable .*ADLEARN_MVTEC_ROOT"):
        common.mvtec_category(tmp_path, "cable")


def test_anomalib_python_takes_the_flag_then_the_environment_else_says_how_to_build_it(monkeypatch, tmp_path):
    common = load_driver("_common")
    flag, env = tmp_path / "flag_python", tmp_path / "env_python"
    flag.write_text(""), env.write_text("")
    monkeypatch.setenv("ANOMALIB_PYTHON", str(env))
    assert common.anomalib_python(str(flag)) == str(flag)
    assert common.anomalib_python(None) == str(env)
    assert common.anomalib_python("", required=False) is None  # an explicit empty flag: none, env or not
    with pytest.raises(SystemExit, match=r"not a file .*benchmarks/README\.md"):
        common.anomalib_python(str(tmp_path / "missing"), required=False)  # a wrong path is never ignored
    monkeypatch.delenv("ANOMALIB_PYTHON")
    assert common.anomalib_python(None, required=False) is None
    with pytest.raises(SystemExit, match=r"--anomalib-python PATH or set ANOMALIB_PYTHON=PATH.*benchmarks/README\.md"):
        common.anomalib_python(None)


def test_clock_splits_wall_from_process_cpu_and_json_round_trips(tmp_path):
    import time

    common = load_driver("_common")
    began = common.clock()
    time.sleep(0.05)  # wall time passes, this process's CPU barely moves
    wall, cpu = common.since(began)
    assert wall >= 0.05 and 0 <= cpu < wall
    began = common.clock()
    total = sum(i * i for i in range(300_000))  # CPU work: counted by both clocks
    wall, cpu = common.since(began)
    assert total > 0 and cpu > 0 and wall > 0
    data = {"rows": [{"s": 1.5, "path": tmp_path}], "n": 3}
    written = common.write_json(tmp_path / "deep" / "out.json", data)
    assert json.loads(written.read_text()) == {"rows": [{"s": 1.5, "path": str(tmp_path)}], "n": 3}
    assert common.REPO_ROOT == BENCHMARKS.parent and (common.REPO_ROOT / "adlearn").is_dir()


# ----------------------------------------------------------------------------- the drivers on tiny data


@pytest.mark.usefixtures("one_torch_thread")
def test_gpu_driver_runs_on_cpu_and_writes_every_figure(small_synthetic_root, tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "gpu.json"
    status = load_driver("bench_gpu").main(
        [
            "--device",
            "cpu",
            "--root",
            str(small_synthetic_root),
            "--category",
            SYNTHETIC_CATEGORIES[0],
            "--max-train",
            "6",
            "--epochs",
            "2",
            "--repeats",
            "1",
            "--nn-half",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    results = {row["model"]: row for row in json.loads(out.read_text())["results"]}
    assert set(results) == {"patchcore", "stfpm", "fastflow"}
    patchcore = results["patchcore"]
    assert patchcore["n_train"] == 6 and patchcore["nn_half"] is True
    assert patchcore["fit_s"] > 0 and patchcore["predict_images_per_s"] > 0 and 0 <= patchcore["pixel_auroc"] <= 1
    for name in ("stfpm", "fastflow"):
        assert results[name]["epochs"] == 2 and len(results[name]["epoch_s"]) == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_driver_watches_the_test_set_without_choosing_on_it(small_synthetic_root, tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "curve.json"
    status = load_driver("archive/watch_training").main(
        [
            "stfpm",
            "--root",
            str(small_synthetic_root),
            "--category",
            SYNTHETIC_CATEGORIES[0],
            "--image-size",
            "64",
            "--set",
            "backbone='efficientnet_lite0'",
            "--set",
            "max_epochs=2",
            "--set",
            "batch_size=8",
            "--set",
            "val_fraction=0.25",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert [row["epoch"] for row in result["curve"]] == [1, 2] and result["epochs_run"] == 2
    assert all(row["val"] is not None and 0 <= row["test_pixel_auroc"] <= 1 for row in result["curve"])
    kept = result["curve"][result["kept_epoch"] - 1]  # the kept epoch's weights are the ones scored at the end
    assert result["test_pixel_auroc"] == pytest.approx(kept["test_pixel_auroc"], abs=1e-9)


@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_driver_starts_from_a_preset_and_lets_set_win(small_synthetic_root, tmp_path):
    from adlearn.data import SYNTHETIC_CATEGORIES

    out = tmp_path / "curve.json"
    status = load_driver("archive/watch_training").main(
        [
            "stfpm",
            "--preset",
            "cpu",
            "--root",
            str(small_synthetic_root),
            "--category",
            SYNTHETIC_CATEGORIES[0],
            "--image-size",
            "64",
            "--set",
            "max_epochs=1",
            "--set",
            "patience=None",
            "--set",
            "batch_size=8",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert result["preset"] == "cpu" and result["epochs_run"] == 1  # --set beat the preset's 25
    assert result["curve"][0]["val"] is not None  # the preset's held-out 20 %


def test_kcenter_greedy_driver_records_the_machine_the_methods_and_refuses_busy_ratios(tmp_path):
    out = tmp_path / "kcg.json"
    argv = [
        "--data",
        "clustered,gaussian",
        "--n",
        "3000",
        "--widths",
        "64",
        "--gaussian-n",
        "2000",
        "--gaussian-width",
        "128",
        "--baseline-steps",
        "5",
        "--coverage-n",
        "0",
        "--anomalib-python",
        "",
        "--threads",
        "1",
        "--methods",
        "adaptive,dense",
        "--json",
        str(out),
    ]
    driver = load_driver("bench_kcenter_greedy")
    # Threshold 1e9: never busy, ratios reported. Threshold 0 with no --allow-busy: every ratio refused.
    assert driver.main(argv + ["--busy-threshold", "1e9"]) == 0
    result = json.loads(out.read_text())
    assert [run["data"] for run in result["runs"]] == ["clustered 3k x 64", "gaussian 2k x 128"]
    for run in result["runs"]:
        assert set(run["ours"]) == {"adaptive", "dense"} and run["ours"]["adaptive"]["speedup"] > 0
        assert sum(run["ours"]["adaptive"]["steps"].values()) == int(run["n"] * 0.1) - 1
    assert result["runs"][1]["ours"]["adaptive"]["switches"] == []  # random data: stays dense
    machine = result["machine"]
    assert machine["machine"]["cpu_model"] and len(machine["parts"]) == 6
    assert all(len(part["load_before"]) == 3 and "other_cpus" in part for part in machine["parts"])
    assert driver.main(argv + ["--busy-threshold", "-1"]) == 0
    refused = json.loads(out.read_text())
    assert all(ours["speedup"] is None for run in refused["runs"] for ours in run["ours"].values())


@pytest.mark.usefixtures("one_torch_thread")
def test_flow_step_timer_runs_on_tiny_data(small_synthetic_root):
    from adlearn.data import SYNTHETIC_CATEGORIES

    driver = load_driver("archive/time_flow_steps")
    row = driver.time_model(
        "uflow",
        str(small_synthetic_root),
        SYNTHETIC_CATEGORIES[0],
        batches=1,
        threads=1,
        seed=0,
        backbone="efficientnet_lite0",
        image_size=64,
        flow_steps=1,
    )
    assert row["batches"] == 2 and row["cpu_s_per_batch"] > 0 and row["batch_size"] == 8


@pytest.mark.usefixtures("one_torch_thread")
def test_ganomaly_digits_driver_reports_every_seed_beside_the_pca_baseline(tmp_path):
    out = tmp_path / "digits.json"
    status = load_driver("bench_ganomaly").main(
        [
            "digits",
            "--digits",
            "3",
            "--seeds",
            "0",
            "1",
            "--epochs",
            "1",
            "--set",
            "n_features=8",
            "--set",
            "latent_size=8",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    ganomaly, pca = result["auroc"]["ganomaly"]["3"], result["auroc"]["pixels + PCA error (scikit-learn)"]["3"]
    assert len(ganomaly) == len(pca) == 2 and all(0 <= v <= 1 for v in ganomaly + pca)
    assert pca[0] > 0.9  # the pixel-PCA baseline separates 3s from the other digits well


@pytest.mark.usefixtures("one_torch_thread")
def test_flow_side_by_side_driver_prepares_a_batch_and_its_adlearn_worker_answers(small_synthetic_root, tmp_path):
    """bench_flows.py without anomalib: the shared batch and settings, then the adlearn worker's protocol."""
    import os
    import subprocess
    import sys

    from adlearn.data import SYNTHETIC_CATEGORIES

    driver = load_driver("bench_flows")
    assert driver.parse_set(["backbone=efficientnet_lite0", "uflow.flow_steps=1"]) == {
        "": {"backbone": "efficientnet_lite0"},
        "uflow": {"flow_steps": 1},
    }
    with pytest.raises(SystemExit, match="not one of"):
        driver.parse_set(["padim.n_features=3"])
    options = {
        "backbone": "efficientnet_lite0",
        "image_size": 64,
        "flow_steps": 1,
        "batch_size": 2,
        **driver.FIXED_IN_ANOMALIB["uflow"],
    }  # as run_model sets them: anomalib's 3x3 / 1x1 subnets
    spec = {
        "model": "uflow",
        "threads": 1,
        "seed": 0,
        "warmup": 1,
        "batch": str(tmp_path / "batch.npy"),
        "options": options,
    }
    spec.update(
        driver.prepare_batch(
            "uflow", str(small_synthetic_root), SYNTHETIC_CATEGORIES[0], 2, options, tmp_path / "batch.npy"
        )
    )
    # what anomalib gets: the timm names of the stages adlearn reads, and the shared widths
    assert spec["timm_layers"] == ["blocks.1", "blocks.2", "blocks.4"] and spec["image_size"] == 64  # strides 4/8/16
    assert spec["adlearn_hparams"]["subnet_kernels"] == [3, 1]  # the preset's all-3x3 overridden for the comparison
    assert spec["anomalib"]["flow_steps"] == 1 and spec["anomalib"]["affine_clamp"] == 2.0
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_flows.py"), "--worker", "adlearn", str(tmp_path / "spec.json")],
        input="steps 2\nquit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [
        json.loads(line[len(driver.REPLY) :]) for line in done.stdout.splitlines() if line.startswith(driver.REPLY)
    ]
    ready, timed = answers
    assert ready["side"] == "adlearn" and len(ready["feature_check"]) == 3 and ready["trained_parameters"] > 0
    assert len(timed["steps"]) == 2 and all(s["cpu_s"] > 0 and s["loss"] == s["loss"] for s in timed["steps"])


def test_abba_helper_interleaves_two_worker_processes_and_judges_each_turn(tmp_path):
    """benchmarks/_abba.py: warm-up, then A B B A / B A A B turns, every step timed, each turn's load judged."""
    import sys

    abba = load_driver("_abba")
    script = tmp_path / "toy_worker.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "import _abba\n"
        "side, spec = sys.argv[2], json.loads(sys.argv[3])\n"
        "work = spec['work'][side]\n"
        "def step():\n"
        "    sum(i * i for i in range(work))\n"
        "sys.exit(_abba.serve(step, side, spec, {'work': work}))\n"
    )
    spec = {"work": {"fast": 20_000, "slow": 400_000}, "busy_threshold": 1e9}  # never busy: ratios reported
    machine = abba.machine_module()
    guard = machine.LoadGuard(threshold=1e9, echo=False)
    workers = {side: abba.Worker(str(script), side, sys.executable, spec) for side in ("fast", "slow")}
    result = abba.interleave(workers, guard, warmup=1, rounds=2, steps_per_turn=3)
    assert [r["label"] for r in guard.records] == [
        "fast round0.0",
        "slow round0.1",
        "slow round0.2",
        "fast round0.3",
        "slow round1.0",
        "fast round1.1",
        "fast round1.2",
        "slow round1.3",
    ]
    assert all("other_cpus" in r and r["busy"] is False for r in guard.records)
    for side in ("fast", "slow"):
        assert result[side]["steps"] == 12 and len(result[side]["cpu_s"]) == 12
        assert result[side]["info"]["work"] == spec["work"][side]
    assert result["ratio_cpu"] == pytest.approx(result["fast"]["median_cpu_s"] / result["slow"]["median_cpu_s"])
    assert result["ratio_cpu"] < 1  # 20x less work per step
    assert all(worker.process.poll() == 0 for worker in workers.values())  # both closed cleanly
    # the same turns judged busy (threshold below any load) and no allow_busy: the ratio is refused
    strict = machine.LoadGuard(threshold=-1.0, echo=False)
    for record in guard.records:
        strict.records.append(strict.judge(dict(record)))
    assert strict.ratio(1.0, 2.0, *[r["label"] for r in strict.records]) is None


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    "model, network, size",
    [
        ("draem", {"reconstruction_width": 4, "discrimination_width": 2, "textures": None}, 32),
        ("ganomaly", {"n_features": 4, "latent_size": 8}, 16),
    ],
)
def test_recon_step_driver_steps_our_model_once_per_call(model, network, size, tmp_path):
    """bench_recon_steps.py's adlearn side: each ``step()`` is one real training step (every optimizer moves)."""
    import torch

    images = tmp_path / "images.pt"
    torch.save(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)), images)
    step, simulate, ours, trainer = load_driver("bench_recon_steps").adlearn_step(
        {"model": model, "images": str(images), **network}
    )
    before = {name: p.detach().clone() for name, p in ours.named_parameters()}
    step()
    assert trainer.global_step == 1 and all(torch.isfinite(torch.tensor(v)) for v in trainer.last_losses.values())
    moved = {name.split(".")[0] for name, p in ours.named_parameters() if not torch.equal(p, before[name])}
    assert moved == ({"reconstructive", "discriminative"} if model == "draem" else {"generator", "discriminator"})
    if model == "draem":
        original, augmented, mask = simulate()
        assert augmented.shape == original.shape == (2, 3, size, size) and mask.shape == (2, 1, size, size)
    else:
        assert simulate is None


@pytest.mark.usefixtures("one_torch_thread")
def test_paper_patchcore_for_the_latency_comparison_has_the_papers_shapes():
    """bench_efficient_ad.py --paper-patchcore: WRN-50-2 layer2+3 patches (1536-d), a bank of the asked size,
    and a prediction that scores every image."""
    import torch

    model = load_driver("bench_efficient_ad").paper_patchcore(50)
    assert model.config["backbone"] == "wide_resnet50_2" and model.memory_bank.shape == (50, 1536)
    prediction = model.predict(torch.randn(2, 3, 256, 256))
    assert prediction.pred_score.shape == (2,) and prediction.anomaly_map.shape[-2:] == (256, 256)


def test_efficient_ad_equivalence_check_maps_every_trained_parameter_onto_the_reference_layout():
    """archive/check_efficient_ad_equivalence.py copies our student and autoencoder into anomalib's networks by name:
    every parameter must land on a distinct name of the reference's layout (encoder enconv1–6, decoder
    deconv1–8; the student's names are the reference's already), and the compare step must flag a change."""
    import torch

    from adlearn.models import create

    check = load_driver("archive/check_efficient_ad_equivalence")
    model = create("efficient_ad", image_size=64, teacher_weights="none", device="cpu")
    names = [name for name, _ in model.named_parameters() if name.startswith(("student.", "autoencoder."))]
    mapped = [check.reference_name(name) for name in names]
    assert len(set(mapped)) == len(names)
    reference = {f"ae.encoder.enconv{i}.{leaf}" for i in range(1, 7) for leaf in ("weight", "bias")}
    reference |= {f"ae.decoder.deconv{i}.{leaf}" for i in range(1, 9) for leaf in ("weight", "bias")}
    assert {name for name in mapped if name.startswith("ae.")} == reference
    assert all(name == check.reference_name(name) for name in names if name.startswith("student."))

    same = {
        k: torch.ones(1)
        for k in (
            "teacher_mean",
            "teacher_std",
            "map_st",
            "map_ae",
            "quantiles",
            "anomaly_map",
            "loss_st",
            "loss_ae",
            "loss_stae",
            "grad/ae.x",
            "update/student.x",
            "update/ae.x",
        )
    }
    ours = {**same, "score": torch.tensor([1.0, 2.0]), "grad/student.conv1.weight": torch.ones(3)}
    theirs = {**ours, "score": torch.tensor([1.0, 2.001])}
    rows = {row["piece"]: row for row in check.compare(ours, theirs, rtol=1e-4)}
    score = rows["4. image score"]
    assert not score["agrees"] and score["max_abs_difference"] == pytest.approx(1e-3, rel=1e-3)
    assert all(row["agrees"] for piece, row in rows.items() if piece != "4. image score")


def test_reference_penalty_views_follow_the_reference_transform(tmp_path):
    """bench_efficient_ad.py --penalty reference: each view is the centre of the file resized to 2x, grey with
    probability 0.3, every file once per pass, ImageNet-normalised."""
    import numpy as np
    from PIL import Image

    from adlearn.data.transforms import denormalize

    bench = load_driver("bench_efficient_ad")
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for index, colour in enumerate(colours):
        array = np.zeros((64, 64, 3), np.uint8)
        array[16:48, 16:48] = colour  # the centre quarter: what the view keeps
        Image.fromarray(array).save(tmp_path / f"{index}.png")
    views = bench.ReferencePenaltyViews(tmp_path, 32, seed=0)
    first_pass = denormalize(views.sample(4))
    assert first_pass.shape == (4, 3, 32, 32)
    centres = {tuple((first_pass[i, :, 16, 16] * 255).round().int().tolist()) for i in range(4)}
    greys = sum(len(set(c)) == 1 for c in centres)
    assert len(centres) == 4  # each file once per pass
    colourful = {c for c in centres if len(set(c)) > 1}
    assert colourful <= set(colours) and len(colourful) + greys == 4
    assert bool((first_pass[:, :, 1, 1] > 0.1).any(1).all())  # corners inside the square: the centre was kept
    many = denormalize(views.sample(400))
    grey_fraction = float(((many.amax(1) - many.amin(1)).amax((1, 2)) < 1e-6).float().mean())
    assert 0.22 < grey_fraction < 0.38  # p = 0.3


def test_match_reference_recipe_keeps_the_learning_rate_constant():
    """bench_efficient_ad.py --lr-decay none: after the model's own fit start (which sets the 95 % milestone),
    the learning rate of the model's own optimiser and schedule stays at lr for every step; --lr-decay paper
    leaves the decay (x 0.1 from the milestone) alone."""
    from adlearn.models import create

    bench = load_driver("bench_efficient_ad")
    for lr_decay, expected in (("none", [1.0] * 20), ("paper", [1.0] * 19 + [0.1])):
        model = create("efficient_ad", image_size=64, device="cpu")
        # the model's fit start, less the teacher it would load: the milestone at 95 % of 20 steps
        model.on_fit_start = lambda data, trainer, model=model: setattr(model, "_decay_step", int(0.95 * 20))
        bench.match_reference_recipe(model, {"lr_decay": lr_decay, "penalty": "crops", "seed": 0})
        model.on_fit_start(None, None)
        optimizer, schedule = model.configure_optimizers()
        rates = []
        for _ in range(20):
            rates.append(optimizer.param_groups[0]["lr"] / model.lr)
            optimizer.step()
            schedule.step()
        assert rates == pytest.approx(expected)
        assert model._natural is None  # the penalty stream untouched ("crops")
