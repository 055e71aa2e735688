"""Maintenance tools for the course material (run as ``python -m adlearn.tools.<name>``).

- `clear_notebooks` — strip outputs, execution counts and widget state before committing notebooks.
- `run_notebooks`   — execute notebooks with papermill (smoke on CPU for the tests, full on a GPU),
  in parallel, with per-notebook wall times and the metrics each model notebook reports.

Nothing here is imported by ``import adlearn``; the runner needs the ``dev`` extra (papermill).
"""
