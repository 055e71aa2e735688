"""Download UCSD Ped2 (the UCSD Anomaly Dataset archive, which holds Ped1 and Ped2) for video anomaly detection.

    python data_scripts/download_ucsd_ped2.py --dest datasets/ucsd
    python data_scripts/download_ucsd_ped2.py --archive ~/Downloads/UCSD_Anomaly_Dataset.tar.gz

The result is ``<dest>/.../UCSDped2/{Train/Train001/*.tif, Test/Test001/*.tif, Test/Test001_gt/*.bmp}``,
which ``adlearn.data.ucsd_ped2(root, split)`` reads (the command prints ``root``). The archive is checked
against its published SHA-256, an interrupted download resumes when the command is run again, and every
archive member is checked before anything is written. Without internet, download the archive by hand and
pass it with ``--archive``. The UCSD Anomaly Dataset (Mahadevan et al., CVPR 2010) is provided by its
authors for research purposes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import adlearn  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adlearn.data.download import DownloadError  # noqa: E402
from adlearn.data.errors import DataError  # noqa: E402
from adlearn.data.video_download import UCSD_SHA256, UCSD_URL, prepare_ucsd_ped2  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default="datasets/ucsd", help="folder to extract into (default: %(default)s)")
    parser.add_argument("--archive", default=None, help="use this already downloaded UCSD_Anomaly_Dataset.tar.gz")
    parser.add_argument("--url", default=UCSD_URL, help="download URL (default: official)")
    parser.add_argument("--sha256", default=UCSD_SHA256, help="expected SHA-256; 'none' only reports the computed one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sha256 = None if str(args.sha256).lower() == "none" else args.sha256
    try:
        root = prepare_ucsd_ped2(
            args.dest, archive=args.archive, url=args.url, sha256=sha256, progress=not args.no_progress
        )
    except (DownloadError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done. Use it with: ucsd_ped2({str(root)!r}, 'test')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
