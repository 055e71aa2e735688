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

from adlearn.data.download import (  # noqa: E402
    MVTEC_SHA256,
    MVTEC_URL,
    archive_arguments,
    checksum_option,
    prepare_mvtec,
    run_download,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    archive_arguments(
        parser,
        dest="datasets/mvtec_ad",
        archive_name="mvtec_anomaly_detection.tar.xz",
        url=MVTEC_URL,
        sha256=MVTEC_SHA256,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_download(
        lambda: prepare_mvtec(
            args.dest,
            archive=args.archive,
            url=args.url,
            sha256=checksum_option(args.sha256),
            progress=not args.no_progress,
        ),
        lambda root: f"Use it with: MVTecDataset({str(root)!r}, 'bottle') or export ADLEARN_MVTEC_ROOT={root}",
    )


if __name__ == "__main__":
    sys.exit(main())
