"""`adlearn.options`: one way in for a model's options, the same model and the same errors from every entry point."""

from __future__ import annotations

import socket
import time

import pytest

import adlearn
from adlearn import benchmark, cli
from adlearn.options import (
    OptionError,
    accepted_options,
    build_model,
    default_options,
    options_for_models,
    parse_set,
    resolve_options,
)

LITE0 = "efficientnet_lite0"


# ------------------------------------------------------------------------------------ each entry point's options
def create_call(name: str, preset: str | None, options: dict) -> tuple[str | None, dict]:
    return preset, options  # adlearn.create(name, preset=preset, **options)


def evaluate_call(name: str, argv: list[str]) -> tuple[str | None, dict]:
    """(preset, explicit options) of ``adlearn evaluate NAME ARGV`` — what `cli.run_evaluation` builds from."""
    args = cli.build_parser().parse_args(["evaluate", name, *argv])
    return cli._preset(args), cli.run_options(args, parse_set(args.set))


def demo_call(name: str, argv: list[str]) -> tuple[str | None, dict]:
    """(preset, explicit options) of ``adlearn demo --models NAME ARGV`` — what `cli.cmd_demo` fits."""
    args = cli.build_parser().parse_args(["demo", "--models", name, *argv])
    return cli._preset(args), cli.demo_options(args)[name]


def benchmark_call(name: str, argv: list[str], monkeypatch) -> tuple[str | None, dict]:
    """(preset, explicit options) ``adlearn benchmark --models NAME ARGV`` passes to ``adlearn.create`` in a cell."""
    import adlearn.models

    args = cli.build_parser().parse_args(["benchmark", "--models", name, *argv])
    preset = None if args.preset == "none" else args.preset
    spec = {
        "model": name,
        "category": "weave",
        "seed": args.seeds.split(",")[0],
        "preset": preset,
        "device": args.device,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "set": parse_set(args.set),
    }
    spec["seed"] = int(spec["seed"])
    benchmark._check_set_keys([name], benchmark.shared_options(spec))
    calls = []

    def capture(model, preset=None, **options):
        calls.append((preset, options))
        raise RuntimeError("captured")

    monkeypatch.setattr(adlearn.models, "create", capture)
    with pytest.raises(RuntimeError, match="captured"):
        benchmark.run_cell(spec)
    monkeypatch.undo()
    return calls[0]


@pytest.mark.parametrize(
    ("name", "python_options", "argv"),
    [
        ("padim", {"image_size": 64, "n_features": 40}, ["--image-size", "64", "--set", "n_features=40"]),
        (
            "stfpm",
            {"image_size": 64, "max_epochs": 1, "pretrained": "none"},
            ["--image-size", "64", "--set", "max_epochs=1", "--set", "pretrained=none"],
        ),
    ],
)
def test_one_configuration_through_every_entry_point_is_one_model(name, python_options, argv, monkeypatch):
    """create, evaluate, demo and benchmark, given the same preset and options, resolve the same options and
    build models with the same config (demo and benchmark name their default preset, cpu; evaluate names it)."""
    common = ["--device", "cpu", "--seed", "0"]
    calls = {
        "create": create_call(name, "cpu", {"device": "cpu", "seed": 0, **python_options}),
        "evaluate": evaluate_call(name, ["--preset", "cpu", *common, *argv]),
        "benchmark": benchmark_call(name, ["--device", "cpu", "--seeds", "0", *argv], monkeypatch),
        "demo": demo_call(name, [*common, *argv]),
    }
    resolved = {entry: resolve_options(name, preset, options) for entry, (preset, options) in calls.items()}
    reference = resolved["create"]
    for entry, options in resolved.items():
        assert options == reference, entry
    # every option has a value, the preset's under the explicit ones
    assert list(reference) == accepted_options(name)
    assert reference["backbone"] == LITE0 and reference["image_size"] == 64 and reference["device"] == "cpu"
    configs = {entry: build_model(name, preset, options).config for entry, (preset, options) in calls.items()}
    assert configs["create"] == adlearn.create(name, preset="cpu", device="cpu", seed=0, **python_options).config
    for entry, config in configs.items():
        assert config == configs["create"] == reference, entry


def test_demo_and_benchmark_name_the_cpu_preset_and_evaluate_the_paper_defaults():
    assert demo_call("padim", [])[0] == "cpu" and evaluate_call("padim", [])[0] is None
    args = cli.build_parser().parse_args(["benchmark"])
    assert args.preset == "cpu" and args.backbone is None and args.image_size is None
    # no entry point adds a backbone of its own: without a preset, the paper's
    assert "backbone" not in demo_call("padim", ["--preset", "none"])[1]
    assert resolve_options("padim", *evaluate_call("padim", []))["backbone"] == "resnet18"


def test_demo_prints_its_preset_then_the_models_an_option_skips(monkeypatch, capsys):
    seen = []

    def fake_run(model_name, args, extra, category=None, options=None):
        seen.append((model_name, options))
        raise RuntimeError("stop before fitting")

    monkeypatch.setattr(cli, "run_evaluation", fake_run)
    argv = [
        "demo",
        "--models",
        "padim,stfpm",
        "--device",
        "cpu",
        "--set",
        "max_epochs=1",
        "--set",
        "padim.n_features=30",
    ]
    with pytest.raises(RuntimeError, match="stop before fitting"):
        cli.main(argv)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("preset: cpu (padim: backbone='efficientnet_lite0'; stfpm: backbone='efficientnet_lite0',")
    assert err[1] == "max_epochs: not an option of padim, which run without it"
    assert seen == [("padim", {"device": "cpu", "seed": 0, "n_features": 30})]


def test_defaults_then_preset_then_explicit():
    defaults = default_options("stfpm")
    assert defaults["backbone"] == "resnet18" and defaults["max_epochs"] == 100 and defaults["patience"] == 5
    cpu = adlearn.models.get_model_class("stfpm").presets["cpu"]
    resolved = resolve_options("stfpm", "cpu", {"max_epochs": 3})
    assert resolved == {**defaults, **cpu, "max_epochs": 3}
    assert resolve_options("padim", "none") == resolve_options("padim") == default_options("padim")
    # paper: the paper's settings, here PaDiM's center crop
    assert resolve_options("padim", "paper")["center_crop"] == "auto"


# ------------------------------------------------------------------------------------ the same errors everywhere
def error_of(call) -> str:
    with pytest.raises(OptionError) as info:
        call()
    return str(info.value)


def cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adlearn: error: ")
    return err.removeprefix("adlearn: error: ")


def test_an_unknown_option_is_the_same_error_everywhere_with_the_closest_match(capsys):
    message = error_of(lambda: adlearn.create("padim", n_feature=40))
    assert message.startswith("padim: unknown option 'n_feature' (did you mean 'n_features'?)")
    assert "Its options: backbone, layers, pretrained, n_features," in message
    assert error_of(lambda: resolve_options("padim", "cpu", {"n_feature": 40})) == message
    assert error_of(lambda: benchmark._check_set_keys(["padim"], {"n_feature": 40})) == message
    assert error_of(lambda: options_for_models(["padim"], {"padim.n_feature": 40})) == message
    assert cli_error(["evaluate", "padim", "--preset", "cpu", "--set", "n_feature=40"], capsys) == message
    assert cli_error(["benchmark", "--models", "padim", "--set", "n_feature=40"], capsys) == message
    # a trained model also lists the training loop's options; a TypeError too, like Python's own
    with pytest.raises(TypeError, match=r"stfpm: unknown option 'max_epoch' \(did you mean 'max_epochs'\?\).*"):
        adlearn.create("stfpm", max_epoch=2)
    assert "Training options: max_epochs, max_steps, patience" in error_of(lambda: adlearn.create("stfpm", epochs=2))
    # an unknown preset, the same way
    preset_message = error_of(lambda: adlearn.create("padim", preset="gpu"))
    assert preset_message.startswith("padim has no preset 'gpu'; presets: cpu, paper (did you mean 'cpu'?)")
    assert cli_error(["evaluate", "padim", "--preset", "gpu"], capsys) == preset_message
    assert cli_error(["demo", "--models", "padim", "--preset", "gpu"], capsys) == preset_message


def test_an_invalid_value_is_named_as_the_user_spelled_it(capsys):
    # CS-Flow hands n_coupling_blocks to its flow as n_blocks: the error says n_coupling_blocks
    options = {"pretrained": "none", "device": "cpu", "n_coupling_blocks": 0}
    message = error_of(lambda: adlearn.create("csflow", preset="cpu", **options))
    assert message.startswith("csflow: n_coupling_blocks=0 is not valid: ") and "n_blocks must be >= 1" in message
    # among several options the rejected one is found
    several = error_of(lambda: adlearn.create("csflow", preset="cpu", lr=0.1, clamp=2.0, **options))
    assert several == message
    argv = ["evaluate", "csflow", "--preset", "cpu", "--pretrained", "none", "--device", "cpu"]
    assert cli_error([*argv, "--set", "n_coupling_blocks=0"], capsys) == message
    # a message that already names the option is the model's own, unchanged
    with pytest.raises(ValueError, match=r"^n_features=100000 must be in 1\.\."):
        adlearn.create("padim", backbone=LITE0, pretrained="none", n_features=100000)
    with pytest.raises(ValueError, match="training option patience=0"):
        adlearn.create("stfpm", backbone=LITE0, pretrained="none", patience=0)


# ------------------------------------------------------------------------------------ --set
def test_parse_set_round_trips_typed_values():
    values = {
        "n_features": 100,
        "lr": 1e-3,
        "blur_sigma": -0.5,
        "precise_bn": False,
        "patience": None,
        "layers": ("layer1", "layer2"),
        "image_size": [256, 320],
        "backbone": "resnet18",
    }
    assert parse_set([f"{key}={value!r}" for key, value in values.items()]) == values
    parsed = parse_set(["backbone=wide_resnet50_2", "pretrained=/tmp/w.pth", "name=a=b", "empty="])
    assert parsed == {"backbone": "wide_resnet50_2", "pretrained": "/tmp/w.pth", "name": "a=b", "empty": ""}
    assert type(parse_set(["x=1"])["x"]) is int and type(parse_set(["x=1.0"])["x"]) is float
    assert parse_set([]) == parse_set(None) == {}
    for bad in ("n_features", "=3"):
        with pytest.raises(OptionError, match="--set expects KEY=VALUE"):
            parse_set([bad])


# ------------------------------------------------------------------------------------ offline: fail fast
@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No cached hub weights, and a fresh answer from the connection probe."""
    from huggingface_hub import constants

    from adlearn.components.feature_extractors import backbones

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "_hub_reachable", {})
    return backbones


def test_the_probe_tells_a_closed_port_from_a_listening_one(empty_hub_cache, monkeypatch):
    backbones = empty_hub_cache
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert backbones.hub_reachable()
    with socket.socket() as closed:  # bound, never listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert not backbones.hub_reachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not backbones.hub_reachable()


def test_offline_the_hub_fails_fast_and_names_the_offline_preset(empty_hub_cache, monkeypatch, capsys):
    backbones = empty_hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(backbones.PretrainedWeightsError) as info:
        backbones.load_backbone("resnet18", "hub", features_only=True)
    assert time.perf_counter() - start < 15  # not a minute of retries
    message = str(info.value)
    assert "no connection to the timm hub" in message and "'resnet18' are not in the local cache" in message
    assert "--preset cpu" in message and "backbone='efficientnet_lite0'" in message
    # the CLI's paper default (resnet18) says the same, as an error message
    err = cli_error(["evaluate", "padim", "--device", "cpu"], capsys)
    assert "--preset cpu" in err and "'resnet18'" in err
