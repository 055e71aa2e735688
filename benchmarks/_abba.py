"""Per-step CPU time of two implementations, measured in turns A B B A: the drivers' shared helper.

Each side runs in its own persistent process (adlearn's venv or anomalib's), holding its model and a
fixed batch; the driver asks it for ``N`` steps at a time and gets back every step's process CPU
seconds (and wall seconds). After a warm-up, turns alternate A B B A (then B A A B, ...), so a slow
drift of the machine's load falls on both sides alike; the figure compared is the median step.

Each turn is measured *in the worker* by `adlearn.machine.LoadGuard` (CPU used by other processes
while the worker stepped: the driver and the other worker are idle then); the driver judges the
record with its own guard, which refuses a ratio measured under load unless ``--allow-busy``.

stdlib only, and ``adlearn/machine.py`` is loaded by path: this file runs in either venv.

Worker side (``python bench_x.py --worker SIDE SPEC`` calls)::

    serve(step, side, spec)            # prints one JSON line when ready, then one per command

Driver side::

    workers = {"adlearn": Worker(__file__, "adlearn", sys.executable, spec), "anomalib": Worker(...)}
    result = interleave(workers, guard, warmup=1, rounds=2, steps_per_turn=2)
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, clock, since  # noqa: E402


def machine_module():
    """``adlearn/machine.py`` loaded by path (stdlib only): usable without the adlearn package."""
    spec = importlib.util.spec_from_file_location("adlearn_machine_for_bench", REPO_ROOT / "adlearn" / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- worker
def serve(step, side: str, spec: dict, info: dict | None = None) -> int:
    """Answer ``<label> <count>`` lines on stdin with ``{"cpu_s": [...], "wall_s": [...], "record": {...}}``."""
    machine = machine_module()
    warnings.filterwarnings("ignore", category=machine.BusyMachineWarning)  # the driver judges and reports
    guard = machine.LoadGuard(echo=False, threshold=spec.get("busy_threshold"))
    print(json.dumps({"ready": side, **(info or {})}), flush=True)
    for line in sys.stdin:
        label, _, count = line.strip().partition(" ")
        if label == "quit":
            break
        cpu, wall = [], []
        with guard.measure(f"{side} {label}") as record:
            for _ in range(int(count)):
                began = clock()
                step()
                w, c = since(began)
                cpu.append(c)
                wall.append(w)
        print(json.dumps({"cpu_s": cpu, "wall_s": wall, "record": record}), flush=True)
    return 0


# ----------------------------------------------------------------------------- driver
class Worker:
    """One side's process: ``python script --worker side spec_json``."""

    def __init__(self, script: str, side: str, python: str, spec: dict):
        self.side = side
        self.process = subprocess.Popen(
            [python, script, "--worker", side, json.dumps(spec)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker stopped (its error is printed above)")
        return json.loads(line)

    def steps(self, label: str, count: int) -> dict:
        self.process.stdin.write(f"{label} {count}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=120)


def interleave(workers: dict, guard, warmup: int, rounds: int, steps_per_turn: int) -> dict:
    """Warm-up, then ``rounds`` of A B B A (even rounds) / B A A B (odd rounds). Closes the workers.

    Returns per side ``median_cpu_s``, ``median_wall_s``, every step's times, and ``ratio_cpu`` /
    ``ratio_wall`` = first side / second side (None when a turn ran under load and not ``allow_busy``).
    """
    first, second = list(workers)
    try:
        for worker in workers.values():
            worker.steps("warmup", warmup)
        times = {side: {"cpu_s": [], "wall_s": []} for side in workers}
        labels = []
        for round_ in range(rounds):
            order = [first, second, second, first] if round_ % 2 == 0 else [second, first, first, second]
            for turn, side in enumerate(order):
                answer = workers[side].steps(f"round{round_}.{turn}", steps_per_turn)
                record = answer["record"]
                guard.judge(record)
                guard.records.append(record)
                labels.append(record["label"])
                times[side]["cpu_s"] += answer["cpu_s"]
                times[side]["wall_s"] += answer["wall_s"]
    finally:
        for worker in workers.values():
            worker.close()
    result = {
        side: {
            "median_cpu_s": statistics.median(t["cpu_s"]),
            "median_wall_s": statistics.median(t["wall_s"]),
            "steps": len(t["cpu_s"]),
            "info": workers[side].info,
            **t,
        }
        for side, t in times.items()
    }
    result["ratio_cpu"] = guard.ratio(result[first]["median_cpu_s"], result[second]["median_cpu_s"], *labels)
    result["ratio_wall"] = guard.ratio(result[first]["median_wall_s"], result[second]["median_wall_s"], *labels)
    result["protocol"] = {
        "warmup": warmup,
        "rounds": rounds,
        "steps_per_turn": steps_per_turn,
        "order": f"{first[0].upper()}{second[0].upper()}{second[0].upper()}{first[0].upper()}",
    }
    return result


def print_steps(title: str, result: dict, sides: tuple[str, str]) -> None:
    print(
        f"\n{title}: median of {result[sides[0]]['steps']} steps per side after {result['protocol']['warmup']} "
        f"warm-up, {result['protocol']['rounds']} ABBA round(s)"
    )
    print(f"{'side':9s} {'CPU s/step':>10s} {'wall s/step':>11s}")
    for side in sides:
        print(f"{side:9s} {result[side]['median_cpu_s']:10.2f} {result[side]['median_wall_s']:11.2f}")
    print(
        f"ratio {sides[0]}/{sides[1]}: "
        + (
            f"CPU {result['ratio_cpu']:.2f}, wall {result['ratio_wall']:.2f}"
            if result["ratio_cpu"] is not None
            else "not reported (measured under load; --allow-busy)"
        )
    )
