"""`adlearn.machine`: what a benchmark records about the machine and its load, and when it refuses a ratio."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from adlearn import machine
from adlearn.machine import BusyMachineWarning, LoadGuard


def test_machine_info_names_the_cpu_and_counts_cores_and_threads():
    info = machine.machine_info()
    assert info["cpu_model"] and info["cpu_model"] != "unknown"
    assert info["logical_cpus"] == os.cpu_count() >= 1
    assert info["physical_cores"] is None or 1 <= info["physical_cores"] <= info["logical_cpus"]
    assert 1 <= info["usable_cpus"] <= info["logical_cpus"]
    assert info["load_average"] is None or len(info["load_average"]) == 3
    assert info["cpu_model"] in machine.describe(info)


def test_judge_uses_other_processes_cpu_and_falls_back_to_the_load_average():
    guard = LoadGuard(threshold=0.5, echo=False)
    with pytest.warns(BusyMachineWarning, match="busy machine"):
        assert guard.judge({"label": "a", "other_cpus": 0.8, "load_before": [0.1, 0, 0]})["busy"]
    # Our own previous run inflates the load average; other processes' CPU is what counts.
    assert not guard.judge({"label": "b", "other_cpus": 0.2, "load_before": [3.0, 0, 0]})["busy"]
    # Without /proc/stat: the 1-minute load average before the part.
    with pytest.warns(BusyMachineWarning):
        assert guard.judge({"label": "c", "load_before": [1.5, 1, 1]})["busy"]
    assert not guard.judge({"label": "d", "load_before": [0.2, 1, 1]})["busy"]


def test_a_ratio_measured_under_load_is_refused_unless_allowed():
    records = [{"label": "ours", "other_cpus": 0.1}, {"label": "theirs", "other_cpus": 1.2}]
    strict, lenient = LoadGuard(threshold=0.5, echo=False), LoadGuard(threshold=0.5, allow_busy=True, echo=False)
    for guard in (strict, lenient):
        for record in records:
            with pytest.warns(BusyMachineWarning) if record["other_cpus"] > 0.5 else _nothing():
                guard.records.append(guard.judge(dict(record)))
    with pytest.warns(BusyMachineWarning, match="ratio not reported.*theirs.*--allow-busy"):
        assert strict.ratio(10.0, 2.0, "ours", "theirs") is None
    assert strict.ratio(10.0, 2.0, "ours") == 5.0  # only idle parts involved
    assert lenient.ratio(10.0, 2.0, "ours", "theirs") == 5.0
    summary = strict.summary()
    assert summary["any_busy"] and [p["label"] for p in summary["parts"]] == ["ours", "theirs"]
    assert summary["machine"]["cpu_model"] == machine.cpu_model()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_other_processes_cpu_is_measured_and_ours_is_not_counted():
    guard = LoadGuard(threshold=1e9, echo=False)  # never busy: we only check the accounting
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with guard.measure("with a spinner") as record:
            time.sleep(1.5)
        ticks = os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{spinner.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        spinner_cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime of the spinner
    finally:
        spinner.kill()
        spinner.wait()
    # The spinner is "another process": its CPU time is inside other_cpus (it started just before).
    assert record["other_cpus"] * record["wall_s"] >= spinner_cpu - 0.3
    assert record["load_before"] is not None and record["load_after"] is not None
    assert record["busy"] is False
    start = time.process_time()
    with guard.measure("our own work") as own:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pass
    ours = time.process_time() - start
    # Our own CPU second is not counted as other processes' (it would add ~1 core).
    assert own["other_cpus"] <= machine.usable_cpus() - ours / own["wall_s"] + 0.3


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_a_worker_process_named_in_pids_counts_as_ours():
    guard = LoadGuard(threshold=1e9, echo=False)
    worker = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start
        before = machine.process_cpu_seconds(worker.pid)
        with guard.measure("worker counted as ours", pids=(worker.pid,)) as mine:
            time.sleep(1.5)
        with guard.measure("worker counted as another process") as theirs:
            time.sleep(1.5)
        spent = machine.process_cpu_seconds(worker.pid) - before
    finally:
        worker.kill()
        worker.wait()
    assert spent > 1.0  # the worker did spin (about 1 core)
    # The same spinning worker: about one core more among "other processes" when it is not named.
    assert theirs["other_cpus"] - mine["other_cpus"] > 0.5
    assert machine.process_cpu_seconds(worker.pid) is None  # reaped: no /proc entry
