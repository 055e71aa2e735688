"""What every benchmark driver shares: the repository's paths, where the data and the reference live, the clock,
JSON output.

stdlib only: the drivers import it in adlearn's venv and in anomalib's (``_anomalib.py``, the ``--worker`` /
``--anomalib-side`` halves of the drivers). A driver puts this folder on ``sys.path`` and imports it::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import REPO_ROOT, anomalib_python, clock, mvtec_root, since, write_json

Nothing here knows a machine: the MVTec AD root and the anomalib interpreter come from a flag or from the
environment (``ADLEARN_MVTEC_ROOT``, ``ANOMALIB_PYTHON``), and when a driver needs one that is given by
neither, it stops with an error that names both (and, for anomalib, how to build its venv).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

MVTEC_ENV = "ADLEARN_MVTEC_ROOT"
ANOMALIB_ENV = "ANOMALIB_PYTHON"
ANOMALIB_HOW = (
    "anomalib is a reference, not a dependency: it lives in a venv of its own, built once per machine as "
    "benchmarks/README.md shows ('The anomalib venv')"
)


def _flag_or_env(arg: str | os.PathLike | None, env: str) -> str | None:
    """The flag's value when one was given (an explicit empty flag means "none"), else the environment's."""
    if arg is not None:
        return str(arg) or None
    return os.environ.get(env) or None


def mvtec_root(arg: str | os.PathLike | None = None, *, required: bool = True, flag: str = "--root") -> Path | None:
    """The MVTec-layout root: ``arg`` (the driver's ``flag``), else ``$ADLEARN_MVTEC_ROOT``.

    With neither: ``SystemExit`` naming both when ``required``, else ``None`` (drivers that fall back to
    synthetic data, or skip their real-data part). The folder is not checked here: see `mvtec_category`.
    """
    value = _flag_or_env(arg, MVTEC_ENV)
    if value is None:
        if required:
            raise SystemExit(
                f"no MVTec AD root given: pass {flag} DIR or set {MVTEC_ENV}=DIR "
                "(a folder holding <category>/train/good, as MVTec AD is unpacked)"
            )
        return None
    return Path(value).expanduser()


def mvtec_category(root: Path | str, category: str, flag: str = "--root") -> Path:
    """``root / category``, or ``SystemExit`` naming the flag and the variable when it has no ``train/good``."""
    folder = Path(root) / category
    if not (folder / "train" / "good").is_dir():
        raise SystemExit(f"no MVTec category at {folder} (no train/good inside): set {flag} or {MVTEC_ENV}")
    return folder


def anomalib_python(
    arg: str | os.PathLike | None = None, *, required: bool = True, flag: str = "--anomalib-python"
) -> str | None:
    """The python of anomalib's venv: ``arg`` (the driver's ``flag``), else ``$ANOMALIB_PYTHON``.

    With neither: ``SystemExit`` saying how to build the venv when ``required``, else ``None`` (drivers that
    then run adlearn's side only; an explicit empty flag also means none). One given that is not a file is
    always an error.
    """
    value = _flag_or_env(arg, ANOMALIB_ENV)
    if value is None:
        if required:
            raise SystemExit(
                f"no anomalib interpreter given: pass {flag} PATH or set {ANOMALIB_ENV}=PATH "
                f"(the venv's bin/python). {ANOMALIB_HOW}."
            )
        return None
    if not Path(value).is_file():
        raise SystemExit(f"anomalib interpreter {value} is not a file ({flag} / {ANOMALIB_ENV}). {ANOMALIB_HOW}.")
    return value


def clock() -> tuple[float, float]:
    """(wall seconds, process-CPU seconds) now: a start mark for `since`.

    Process CPU counts every thread of this process and nothing of the others', so it stays steady on a
    machine shared with other jobs, where wall-clock time does not; drivers record both.
    """
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, process-CPU seconds) elapsed since ``start = clock()``."""
    return time.perf_counter() - start[0], time.process_time() - start[1]


def write_json(path: str | os.PathLike, data, indent: int = 2) -> Path:
    """``data`` as indented JSON at ``path`` (parent folders made; paths and other objects as ``str``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    return path
