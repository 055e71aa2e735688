"""Download CUHK Avenue (its videos and their pixel annotations, two archives) for video anomaly detection.

    python data_scripts/download_avenue.py --dest datasets/avenue
    python data_scripts/download_avenue.py --dest datasets/avenue \\
        --archive ~/Downloads/Avenue_Dataset.zip --annotations ~/Downloads/ground_truth_demo.zip

The result is ``<dest>/{training_videos/01.avi, testing_videos/01.avi, ground_truth_demo/testing_label_mask/}``
with each test video's masks converted from MATLAB (``1_label.mat``) to a folder of PNG masks
(``1_label/0000.png``, ...; ``--keep-mat`` skips this), which ``adlearn.data.avenue(dest, split)`` reads.
Both archives are checked against their published SHA-256, an interrupted download resumes when the
command is run again, and every archive member is checked before anything is written. Without internet,
download both archives by hand and pass them with ``--archive`` and ``--annotations``. CUHK Avenue (Lu,
Shi & Jia, ICCV 2013) is released for academic research only.
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
from adlearn.data.video_download import (  # noqa: E402
    AVENUE_LABELS_SHA256,
    AVENUE_LABELS_URL,
    AVENUE_SHA256,
    AVENUE_URL,
    prepare_avenue,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    archive_arguments(
        parser,
        dest="datasets/avenue",
        archive_name="Avenue_Dataset.zip",
        url=AVENUE_URL,
        sha256=AVENUE_SHA256,
        what="of the videos",
    )
    parser.add_argument("--annotations", default=None, help="use this already downloaded ground_truth_demo.zip")
    parser.add_argument("--annotations-url", default=AVENUE_LABELS_URL, help="annotations URL (default: official)")
    parser.add_argument(
        "--annotations-sha256", default=AVENUE_LABELS_SHA256, help="expected SHA-256 of the annotations; or 'none'"
    )
    parser.add_argument("--keep-mat", action="store_true", help="keep the masks as .mat files only (no PNG folders)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_download(
        lambda: prepare_avenue(
            args.dest,
            archive=args.archive,
            annotations=args.annotations,
            url=args.url,
            sha256=checksum_option(args.sha256),
            annotations_url=args.annotations_url,
            annotations_sha256=checksum_option(args.annotations_sha256),
            convert_masks=not args.keep_mat,
            progress=not args.no_progress,
        ),
        lambda root: f"Use it with: avenue({str(root)!r}, 'test')",
    )


if __name__ == "__main__":
    sys.exit(main())
