"""Where adlearn keeps what it generates once and reuses: synthetic datasets, texture folders, pretrained
teachers and VQ models.

A bottom-layer helper (standard library only), so that data generators and models can share one cache
folder without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where adlearn keeps generated data: ``$ADLEARN_CACHE``, else ``~/.cache/adlearn``."""
    return Path(os.environ.get("ADLEARN_CACHE") or Path.home() / ".cache" / "adlearn").expanduser()


__all__ = ["cache_dir"]
