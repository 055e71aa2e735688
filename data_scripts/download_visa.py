"""Download VisA (about 1.8 GB) and convert it to the MVTec layout `MVTecDataset` reads.

    python data_scripts/download_visa.py --dest datasets
    python data_scripts/download_visa.py --dest datasets --archive ~/Downloads/VisA_20220922.tar

The result is ``<dest>/visa/<category>/{train/good, test/good, test/bad, ground_truth/bad}``,
following VisA's official 1-class split (``split_csv/1cls.csv``), with masks binarized to 0/255.
The archive is checked against its published SHA-256; an interrupted download resumes when the
command is run again. Without internet, download the archive by hand and pass ``--archive``.
VisA is licensed CC BY 4.0.
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
    VISA_SHA256,
    VISA_URL,
    DownloadError,  # noqa: E402
    prepare_visa,
)
from adlearn.data.errors import DataError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", default="datasets", help="folder for the archive and the converted visa/ (default: %(default)s)"
    )
    parser.add_argument("--archive", default=None, help="use this already downloaded VisA_20220922.tar")
    parser.add_argument("--url", default=VISA_URL, help="download URL (default: official)")
    parser.add_argument("--sha256", default=VISA_SHA256, help="expected SHA-256; 'none' only reports the computed one")
    parser.add_argument("--keep-raw", action="store_true", help="keep the extracted original layout in <dest>/visa_raw")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sha256 = None if str(args.sha256).lower() == "none" else args.sha256
    try:
        root = prepare_visa(
            args.dest,
            archive=args.archive,
            url=args.url,
            sha256=sha256,
            keep_raw=args.keep_raw,
            progress=not args.no_progress,
        )
    except (DownloadError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done. Use it with: MVTecDataset({str(root)!r}, 'candle')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
