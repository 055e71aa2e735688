"""The machine a measurement ran on, and how busy it was: one helper for every benchmark.

A speed ratio taken on a loaded machine can be badly wrong: a load penalises many small
multi-threaded operations (OpenMP threads wait on each other) far more than a few large ones, so
two implementations are not slowed down alike. Every benchmark therefore records

* the machine: CPU model, physical cores, logical CPUs (threads), torch's thread count;
* around each measured part: the load average before and after, and the **CPU used by other
  processes** during the part (``other_cpus``, in cores: the whole system's busy CPU time from
  ``/proc/stat`` minus this process's and its waited-for children's, divided by the wall time).

The load average alone cannot judge a part: it includes our own previous part for about a minute.
``other_cpus`` can; a part is *busy* when other processes used more than ``threshold`` cores on
average (default 0.5, ``ADLEARN_BUSY_THRESHOLD``), or — where ``/proc/stat`` is missing — when
the 1-minute load average before it exceeded the threshold.

    guard = LoadGuard(allow_busy=args.allow_busy)
    with guard.measure("adlearn fit"):
        ...
    with guard.measure("anomalib fit"):
        ...
    guard.ratio(ours, theirs, "adlearn fit", "anomalib fit")   # None (with a warning) when busy
    json.dump({"machine": guard.summary(), ...})

Importing this module loads nothing heavy (torch only if it is already imported).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

DEFAULT_THRESHOLD = 0.5  # cores used by other processes (or 1-min load average) above which we call it busy


class BusyMachineWarning(UserWarning):
    """A measurement ran while other processes used the CPU."""


# ------------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in ``/proc/cpuinfo``; None when it cannot tell."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info() -> dict:
    """What a results table must say about the machine it came from."""
    torch = sys.modules.get("torch")
    info = {
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    return info


def cell_machine(device=None) -> str:
    """The machine one result came from, short enough to store beside it: ``Intel Xeon, 2 CPUs`` (and the GPU
    when ``device`` is a CUDA device). A table built from results of several sessions lists these."""
    text = f"{cpu_model()}, {usable_cpus()} CPUs"
    if device is not None and str(device).startswith("cuda"):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def describe(info: dict | None = None) -> str:
    """One line: ``AMD EPYC 7B13, 2 cores / 2 threads, torch 2 threads, load 0.12``."""
    info = info or machine_info()
    load = info.get("load_average")
    text = (
        f"{info['cpu_model']}, {info.get('physical_cores') or '?'} cores / {info['logical_cpus']} threads"
        + (f", torch {info['torch_threads']} threads" if info.get("torch_threads") else "")
        + (f", GPU {info['gpu']}" if info.get("gpu") else "")
    )
    return text + (f", load average {load[0]:.2f}" if load else "")


# ------------------------------------------------------------------------------------ the load
def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _system_busy_seconds() -> float | None:
    """CPU seconds all processes have spent running since boot (``/proc/stat``'s first line)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    values = [int(v) for v in fields[1:9]]
    busy = values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a live process ``pid`` and of the children it has waited for (``/proc/PID/stat``:
    utime + stime + cutime + cstime); None where that file cannot be read (no Linux, process gone)."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def threshold_from_env() -> float:
    return float(os.environ.get("ADLEARN_BUSY_THRESHOLD", DEFAULT_THRESHOLD))


class LoadGuard:
    """Records the load around measured parts; refuses ratios measured under load unless allowed.

    Args:
        allow_busy: report ratios even when a part was busy (they are marked as such).
        threshold: cores used by other processes (or load average, without /proc/stat) above which a
            part is busy. Default: ``ADLEARN_BUSY_THRESHOLD`` or 0.5.
        echo: print one line per busy part and per refused ratio (to stderr).
    """

    def __init__(self, allow_busy: bool = False, threshold: float | None = None, echo: bool = True):
        self.allow_busy = allow_busy
        self.threshold = threshold_from_env() if threshold is None else float(threshold)
        self.echo = echo
        self.records: list[dict] = []
        self._warned: set[str] = set()
        self.start_load = load_average()
        if self.start_load and self.start_load[0] > self.threshold:
            self._warn(
                f"the machine is busy before we start: load average {self.start_load[0]:.2f} "
                f"> {self.threshold} (other processes use the CPU; timings will be inflated)"
            )

    def _warn(self, message: str) -> None:
        """A printed line for people (``echo``), else a `BusyMachineWarning` for code; each once."""
        if message in self._warned:
            return
        self._warned.add(message)
        if self.echo:
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            warnings.warn(message, BusyMachineWarning, stacklevel=3)

    @contextlib.contextmanager
    def measure(self, label: str, pids: tuple[int, ...] = ()):
        """Measure one part; yields its record (filled in when the block ends).

        ``pids``: processes that work *for* this part and are not waited for yet (a worker subprocess kept
        alive between parts): their CPU counts as ours, not as other processes'.
        """
        record = {"label": label, "load_before": load_average()}

        def ours() -> float:
            return _own_cpu_seconds() + sum(process_cpu_seconds(pid) or 0.0 for pid in pids)

        system, own, start = _system_busy_seconds(), ours(), time.perf_counter()
        try:
            yield record
        finally:
            wall = time.perf_counter() - start
            record["wall_s"] = round(wall, 3)
            record["load_after"] = load_average()
            if system is not None and wall > 0:
                others = (_system_busy_seconds() - system) - (ours() - own)
                record["other_cpus"] = round(max(others, 0.0) / wall, 3)
            self.judge(record)
            self.records.append(record)

    def judge(self, record: dict) -> dict:
        """Set ``record["busy"]`` (and ``busy_reason``) from ``other_cpus`` or the load before."""
        other, before = record.get("other_cpus"), record.get("load_before")
        if other is not None:
            busy = other > self.threshold
            reason = f"other processes used {other:.2f} cores on average"
        else:
            busy = bool(before) and before[0] > self.threshold
            reason = f"load average {before[0]:.2f} before it" if before else ""
        record["busy"] = busy
        if busy:
            record["busy_reason"] = reason
            self._warn(f"'{record['label']}' ran on a busy machine: {reason} (> {self.threshold})")
        return record

    def busy(self, *labels: str) -> list[dict]:
        """The busy records among ``labels`` (all records when none is given)."""
        return [r for r in self.records if r.get("busy") and (not labels or r["label"] in labels)]

    def ratio(self, numerator: float, denominator: float, *labels: str) -> float | None:
        """``numerator / denominator``, or None (with a warning) when one of ``labels`` ran busy."""
        busy = self.busy(*labels)
        if busy and not self.allow_busy:
            names = ", ".join(f"'{r['label']}' ({r['busy_reason']})" for r in busy)
            self._warn(
                f"ratio not reported: measured under load: {names}. Rerun on an idle machine, "
                f"or pass --allow-busy to report it anyway (marked as measured under load)"
            )
            return None
        if not denominator:
            return None
        return numerator / denominator

    def activate(self) -> LoadGuard:
        """Make this the guard `guarded_ratio` consults (a driver's helpers need not carry it)."""
        global _ACTIVE
        _ACTIVE = self
        return self

    def summary(self) -> dict:
        """Machine, threshold and every record: put it beside the figures."""
        return {
            "machine": machine_info(),
            "busy_threshold": self.threshold,
            "allow_busy": self.allow_busy,
            "load_at_start": self.start_load,
            "any_busy": bool(self.busy()),
            "parts": self.records,
        }


_ACTIVE: LoadGuard | None = None


def guarded_ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` — or None when the active guard saw a busy part (and no --allow-busy)."""
    if _ACTIVE is not None:
        return _ACTIVE.ratio(numerator, denominator)
    return numerator / denominator if denominator else None


def add_arguments(parser) -> None:
    """``--allow-busy`` and ``--busy-threshold`` for a benchmark's argument parser."""
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="report ratios even when other processes loaded the machine (marked as such)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=None,
        help=f"cores used by other processes above which a part is busy "
        f"(default ADLEARN_BUSY_THRESHOLD or {DEFAULT_THRESHOLD})",
    )


def guard_from_args(args, echo: bool = True) -> LoadGuard:
    return LoadGuard(
        allow_busy=getattr(args, "allow_busy", False), threshold=getattr(args, "busy_threshold", None), echo=echo
    )
