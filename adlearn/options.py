"""One way in for a model's options: the paper defaults, then a named preset, then the explicit options.

Every entry point builds its model through this module — ``adlearn.create``, ``adlearn evaluate``,
``adlearn demo``, ``adlearn benchmark`` and the notebooks (which call ``adlearn.create``) — so the same
call gives the same model everywhere, and a bad option gets the same error everywhere:

    resolve_options("padim", preset="cpu", options={"n_features": 50})
    # {"backbone": "efficientnet_lite0", ..., "n_features": 50, ...}: every option the model takes
    build_model("padim", preset="cpu", options={"n_features": 50})  # what adlearn.create does

- An option the model does not take is an `OptionError` naming the model, its options and the closest
  match (``n_feature`` → did you mean ``n_features``?). Nothing is dropped.
- An invalid value is reported as the user spelled it: CS-Flow's ``n_coupling_blocks=0`` is named as
  such, not as the flow's internal ``n_blocks``.
- ``parse_set`` reads the command line's ``--set KEY=VALUE`` pairs (Python literals, else text).
- ``tiling=(tile_size, stride)`` (and ``tiling_ensemble=True``) is an option of every model: it does not
  configure the model but runs it tiled (`adlearn.models.tiled.TiledModel`, built by `build_model`). It
  is resolved like the others (a preset may set it) and appears in ``resolve_options`` only when set.
- `options_for_models` is the rule for a run over several models (``adlearn benchmark``): a plain
  ``KEY=VALUE`` goes to every selected model that has the option ``KEY`` (the others are listed, never
  silently skipped; a key no selected model has is an error), ``MODEL.KEY=VALUE`` to that model only.

Layer: beside `adlearn.models` (it reads the registry, the model signatures and
`adlearn.train.TrainingConfig`); nothing below imports it.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re

#: Options every model takes besides its own, and their defaults: they wrap the model rather than configure
#: it (``tiling``: run it on tiles, `adlearn.models.tiled`). Set, they appear in `resolve_options`.
WRAPPER_OPTIONS: dict = {"tiling": None, "tiling_ensemble": False}


class OptionError(ValueError, TypeError):
    """An option a model does not take, or a value it rejects (named as the user spelled it).

    A `ValueError` (bad input) and, like Python's own unknown-keyword error, a `TypeError`."""


# ------------------------------------------------------------------------------------ the --set parser
def parse_set(pairs: list[str] | None) -> dict:
    """``["n_features=100", "layers=('layer1',)", "backbone=resnet18"]`` -> typed options.

    A value is read as a Python literal (numbers, booleans, None, tuples, lists, quoted text); anything
    else is kept as text (a bare word such as a backbone name)."""
    options = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"--set expects KEY=VALUE (e.g. --set n_features=100), got {pair!r}")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


# ------------------------------------------------------------------------------------ what a model takes
def _model_class(model_name: str):
    from adlearn.models.registry import get_model_class  # not the package: its create() imports this module

    return get_model_class(model_name)


def _is_trained(model_class) -> bool:
    from adlearn.models.base import TrainedModel

    return issubclass(model_class, TrainedModel)


def _init_parameters(model_class) -> dict[str, inspect.Parameter]:
    """The model's own keyword options (its ``__init__``; the ``**training`` catch-all left out)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(model_class.__init__).parameters
    return {name: p for name, p in parameters.items() if name != "self" and p.kind in kinds}


def training_options() -> tuple[str, ...]:
    """The training loop's options (``max_epochs``, ``patience``, ...), taken by every trained model."""
    from adlearn.train import TrainingConfig

    return TrainingConfig.keys()


def accepted_options(model_name: str) -> list[str]:
    """Every option ``adlearn.create(model_name, ...)`` takes: the model's ``__init__`` keywords, then, for
    a trained model, the training loop's (`adlearn.train.TrainingConfig`)."""
    model_class = _model_class(model_name)
    names = list(_init_parameters(model_class))
    return names + [key for key in training_options() if key not in names] if _is_trained(model_class) else names


def default_options(model_name: str) -> dict:
    """The model's own defaults (the paper's settings): its ``__init__`` defaults, and for a trained model
    `TrainingConfig`'s defaults under the model's ``training_defaults``."""
    from dataclasses import fields

    from adlearn.train import TrainingConfig

    model_class = _model_class(model_name)
    defaults = {
        name: p.default for name, p in _init_parameters(model_class).items() if p.default is not inspect.Parameter.empty
    }
    if _is_trained(model_class):
        training = {f.name: f.default for f in fields(TrainingConfig)}
        defaults.update({**training, **model_class.training_defaults})
    return defaults


def preset_options(model_name: str, preset: str | None) -> dict:
    """What preset ``preset`` sets for the model (``None`` or ``"none"``: nothing; ``"paper"`` without an
    entry: nothing, the defaults are the paper's)."""
    if preset is None or preset == "none":
        return {}
    model_class = _model_class(model_name)
    available = sorted(set(model_class.presets) | {"paper"})
    if preset not in available:
        raise OptionError(
            f"{model_class.name} has no preset {preset!r}; presets: {', '.join(available)}"
            f"{_did_you_mean(preset, available)} (adlearn models --presets lists what each sets)"
        )
    return dict(model_class.preset(preset))


def _did_you_mean(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_option_error(model_name: str, key: str) -> OptionError:
    """The one error for an option ``model_name`` does not take: its options and the closest match."""
    model_class = _model_class(model_name)
    own = list(_init_parameters(model_class))
    close = difflib.get_close_matches(key, [*accepted_options(model_name), *WRAPPER_OPTIONS], n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    text = f"{model_class.name}: unknown option {key!r}{hint}. Its options: {', '.join(own)}"
    if _is_trained(model_class):
        text += f". Training options: {', '.join(training_options())}"
    else:
        text += " (a model without a training loop: no training options)" if key in training_options() else ""
    return OptionError(text)


def check_option_names(model_name: str, options: dict) -> None:
    """Raise the unknown-option error for the first option ``model_name`` does not take."""
    accepted = set(accepted_options(model_name)) | set(WRAPPER_OPTIONS)
    for key in options:
        if key not in accepted:
            raise unknown_option_error(model_name, key)


# ------------------------------------------------------------------------------------ defaults <- preset <- explicit
def resolve_options(model_name: str, preset: str | None = None, options: dict | None = None) -> dict:
    """Every option of the model: its defaults, overridden by the preset's, overridden by ``options``.

    An option the model does not take (in ``options`` or in the preset) is an `OptionError`."""
    options = dict(options or {})
    chosen = preset_options(model_name, preset)
    check_option_names(model_name, chosen)
    check_option_names(model_name, options)
    resolved = {**default_options(model_name), **chosen, **options}
    missing = [key for key in accepted_options(model_name) if key not in resolved]
    if missing:
        raise OptionError(f"{_model_class(model_name).name} needs the option {missing[0]!r} (it has no default)")
    wrappers = {
        key: resolved[key] for key in WRAPPER_OPTIONS if key in resolved and resolved[key] != WRAPPER_OPTIONS[key]
    }
    return {**{key: resolved[key] for key in accepted_options(model_name)}, **wrappers}


def build_model(model_name: str, preset: str | None = None, options: dict | None = None):
    """The model ``resolve_options`` describes (what ``adlearn.create`` returns).

    A value the model rejects is reported as the user spelled it: when the model's own error does not
    name the option (a component's parameter has another name), the error names the option given. A more
    specific error class (e.g. `adlearn.data.DataError`) is the model's own and passes unchanged."""
    resolved = resolve_options(model_name, preset, options)
    model_class = _model_class(model_name)
    own = {key: value for key, value in resolved.items() if key not in WRAPPER_OPTIONS}
    if resolved.get("tiling_ensemble") and resolved.get("tiling") is None:
        raise OptionError(f"{model_class.name}: tiling_ensemble=True needs tiling=(tile_size, stride), e.g. (256, 128)")
    try:
        if resolved.get("tiling") is not None:  # run tiled: adlearn.models.tiled
            from adlearn.models.tiled import TiledModel

            return TiledModel(tiled_model=model_class.name, **resolved)
        return model_class(**own)
    except (ValueError, TypeError) as error:
        culprit = _culprit(model_name, preset, options or {}, error) if type(error) in (ValueError, TypeError) else None
        if culprit is None:
            raise
        key, source = culprit
        raise OptionError(f"{model_class.name}: {source}{key}={resolved[key]!r} is not valid: {error}") from error


def _mentions(text: str, key: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", text) is not None


def _culprit(model_name: str, preset: str | None, options: dict, error: Exception) -> tuple[str, str] | None:
    """(option, where it came from) that the model's ``error`` is about, when the error does not name it
    itself; None when it does (or nothing the user chose differs from the defaults)."""
    defaults = default_options(model_name)
    chosen = preset_options(model_name, preset)
    base = {**defaults, **chosen}
    explicit = [key for key, value in options.items() if key not in base or _differs(value, base[key])]
    from_preset = [key for key, value in chosen.items() if key not in defaults or _differs(value, defaults[key])]
    if any(_mentions(str(error), key) for key in [*explicit, *from_preset]):
        return None  # the model's message already names the option
    if len(explicit) == 1:
        return explicit[0], ""
    # Several candidates: try each on its own (random weights, no download) to find the one rejected.
    for key in explicit:
        if _fails(model_name, {**base, key: options[key]}):
            return key, ""
    if not explicit and len(from_preset) >= 1:
        for key in from_preset:
            if _fails(model_name, {**defaults, key: chosen[key]}):
                return key, f"preset {preset!r}: "
    return None


def _differs(a, b) -> bool:
    try:
        return bool(a != b)
    except Exception:  # e.g. tensors: compare as different
        return True


def _fails(model_name: str, options: dict) -> bool:
    model_class = _model_class(model_name)
    options = {key: value for key, value in options.items() if key not in WRAPPER_OPTIONS}
    if "pretrained" in options and options.get("pretrained") not in ("none", None, False):
        options = {**options, "pretrained": "none"}
    try:
        model_class(**options)
    except (ValueError, TypeError):
        return True
    except Exception:
        return False
    return False


# ------------------------------------------------------------------------------------ several models at once
def _split_key(key: str) -> tuple[str | None, str]:
    """``"padim.n_features"`` -> ("padim", "n_features"); ``"n_features"`` -> (None, "n_features")."""
    model, dot, name = key.partition(".")
    return (model, name) if dot else (None, key)


def options_for_models(models: list[str], options: dict, check: bool = True) -> dict[str, dict]:
    """Each model's explicit options in a run over ``models`` (``adlearn benchmark --set``).

    ``KEY=VALUE`` goes to every model that has the option ``KEY`` — with ``check``, a key none of them
    has is an `OptionError` (the closest match named); `not_applied` lists the models without it.
    ``MODEL.KEY=VALUE`` goes to ``MODEL`` only, and wins over a plain ``KEY``: ``MODEL`` must be one of
    ``models`` and take ``KEY``."""
    accepted = {model: set(accepted_options(model)) | set(WRAPPER_OPTIONS) for model in models}
    per_model: dict[str, dict] = {model: {} for model in models}
    for key, value in options.items():
        target, name = _split_key(key)
        if target is None:
            takers = [model for model in models if name in accepted[model]]
            if check and not takers:
                if len(models) == 1:
                    raise unknown_option_error(models[0], name)
                union = sorted(set().union(*accepted.values()))
                raise OptionError(
                    f"unknown option {name!r}{_did_you_mean(name, union)}: none of {', '.join(models)} has it "
                    f"(each model's options: adlearn.options.accepted_options(name))"
                )
            for model in takers:
                per_model[model].setdefault(name, value)
        elif target not in models:
            if check:
                raise OptionError(f"{key}={value!r}: {target!r} is not one of this run's models ({', '.join(models)})")
        else:
            if check and name not in accepted[target]:
                raise unknown_option_error(target, name)
            per_model[target][name] = value
    return per_model


def not_applied(models: list[str], options: dict) -> dict[str, list[str]]:
    """Plain ``KEY`` -> the models of the run that do not have that option (they run without it)."""
    skipped = {}
    for key in options:
        target, name = _split_key(key)
        if target is None:
            lacking = [model for model in models if name not in {*accepted_options(model), *WRAPPER_OPTIONS}]
            if lacking:
                skipped[name] = lacking
    return skipped


def describe_preset(models: list[str], preset: str | None) -> str:
    """``preset: cpu (padim: backbone='efficientnet_lite0')``: what a run's preset sets, for its first line."""
    if preset is None or preset == "none":
        return "preset: none (each model's defaults)"
    parts = []
    for model in models:
        chosen = preset_options(model, preset)
        parts.append(f"{model}: " + (", ".join(f"{k}={v!r}" for k, v in chosen.items()) or "the defaults"))
    return f"preset: {preset} ({'; '.join(parts)})"


__all__ = [
    "WRAPPER_OPTIONS",
    "OptionError",
    "accepted_options",
    "build_model",
    "check_option_names",
    "default_options",
    "describe_preset",
    "not_applied",
    "options_for_models",
    "parse_set",
    "preset_options",
    "resolve_options",
    "training_options",
    "unknown_option_error",
]
