"""Download MVTec AD (about 4.9 GB) and unpack it in the layout `MVTecDataset` reads.

    python data_scripts/download_mvtec.py --dest datasets/mvtec_ad
    python data_scripts/download_mvtec.py --archive ~/Downloads/mvtec_anomaly_detection.tar.xz

The archive is checked against its published SHA-256. An interrupted download resumes when the
command is run again. Without internet, download the archive by hand from the URL printed in the
error and pass it with ``--archive``. MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import adlearn  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adlearn.data.download import (
    MVTEC_SHA256,
    MVTEC_URL,
    DownloadError,  # noqa: E402
    prepare_mvtec,
)
from adlearn.data.errors import DataError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default="datasets/mvtec_ad", help="folder to extract into (default: %(default)s)")
    parser.add_argument("--archive", default=None, help="use this already downloaded mvtec_anomaly_detection.tar.xz")
    parser.add_argument("--url", default=MVTEC_URL, help="download URL (default: official)")
    parser.add_argument("--sha256", default=MVTEC_SHA256, help="expected SHA-256; 'none' only reports the computed one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sha256 = None if str(args.sha256).lower() == "none" else args.sha256
    try:
        root = prepare_mvtec(
            args.dest, archive=args.archive, url=args.url, sha256=sha256, progress=not args.no_progress
        )
    except (DownloadError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done. Use it with: MVTecDataset({str(root)!r}, 'bottle') or export ADLEARN_MVTEC_ROOT={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
