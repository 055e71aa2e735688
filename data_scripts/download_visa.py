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

from adlearn.data.download import (  # noqa: E402
    VISA_SHA256,
    VISA_URL,
    archive_arguments,
    checksum_option,
    prepare_visa,
    run_download,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    archive_arguments(parser, dest="datasets", archive_name="VisA_20220922.tar", url=VISA_URL, sha256=VISA_SHA256)
    parser.add_argument("--keep-raw", action="store_true", help="keep the extracted original layout in <dest>/visa_raw")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_download(
        lambda: prepare_visa(
            args.dest,
            archive=args.archive,
            url=args.url,
            sha256=checksum_option(args.sha256),
            keep_raw=args.keep_raw,
            progress=not args.no_progress,
        ),
        lambda root: f"Use it with: MVTecDataset({str(root)!r}, 'candle')",
    )


if __name__ == "__main__":
    sys.exit(main())
