"""How long `import adlearn` (and the light sub-packages) takes, in a fresh interpreter.

.venv/bin/python benchmarks/bench_import.py [--runs 5] [--json import.json]
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, write_json  # noqa: E402

CODE = (
    "import time; t = time.perf_counter(); import adlearn, adlearn.data, adlearn.components, adlearn.cli, "
    "adlearn.metrics; print(time.perf_counter() - t)"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters to time")
    parser.add_argument("--json", help="write the seconds of every run here")
    args = parser.parse_args(argv)
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, cwd=REPO_ROOT
            ).stdout
        )
        for _ in range(args.runs)
    ]
    print(
        f"import adlearn (+data, components, cli, metrics): best {min(runs):.3f} s, median "
        f"{statistics.median(runs):.3f} s over {args.runs} fresh interpreters (target < 2 s)"
    )
    if args.json:
        write_json(args.json, {"seconds": runs, "python": sys.executable})
    return 0


if __name__ == "__main__":
    sys.exit(main())
