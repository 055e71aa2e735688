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

from adlearn.data.download import archive_arguments, checksum_option, run_download  # noqa: E402
from adlearn.data.video_download import UCSD_SHA256, UCSD_URL, prepare_ucsd_ped2  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    archive_arguments(
        parser, dest="datasets/ucsd", archive_name="UCSD_Anomaly_Dataset.tar.gz", url=UCSD_URL, sha256=UCSD_SHA256
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_download(
        lambda: prepare_ucsd_ped2(
            args.dest,
            archive=args.archive,
            url=args.url,
            sha256=checksum_option(args.sha256),
            progress=not args.no_progress,
        ),
        lambda root: f"Use it with: ucsd_ped2({str(root)!r}, 'test')",
    )


if __name__ == "__main__":
    sys.exit(main())
