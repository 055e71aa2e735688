"""How long `import adlearn` (and the light sub-packages) takes, in a fresh interpreter."""

import subprocess
import sys

CODE = (
    "import time; t = time.perf_counter(); import adlearn, adlearn.data, adlearn.components, adlearn.cli, "
    "adlearn.metrics; print(time.perf_counter() - t)"
)

if __name__ == "__main__":
    runs = [
        float(subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout)
        for _ in range(5)
    ]
    print(
        f"import adlearn (+data, components, cli, metrics): best {min(runs):.3f} s, median "
        f"{sorted(runs)[2]:.3f} s over 5 fresh interpreters (target < 2 s)"
    )
