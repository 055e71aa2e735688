"""Download the Describable Textures Dataset (DTD, about 625 MB), DRÆM's source of anomaly textures.

    python data_scripts/download_dtd.py --dest datasets/dtd
    python data_scripts/download_dtd.py --archive ~/Downloads/dtd-r1.0.1.tar.gz

Then train DRÆM with it: ``adlearn.create("draem", anomaly_source="datasets/dtd/dtd/images")`` (the
command prints the folder). The archive is checked against its published SHA-256, an interrupted
download resumes when the command is run again, and every archive member is checked before anything
is written (nothing lands outside ``--dest``). Without internet, download the archive by hand from the
URL printed in the error and pass it with ``--archive``; or use the offline sources DRÆM has built in
(``anomaly_source=None``: Perlin noise; ``"skimage"``: scikit-image's photos). DTD (Cimpoi et al.,
CVPR 2014) is provided by its authors for research purposes.
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
    DTD_SHA256,
    DTD_URL,
    archive_arguments,
    checksum_option,
    prepare_dtd,
    run_download,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    archive_arguments(parser, dest="datasets/dtd", archive_name="dtd-r1.0.1.tar.gz", url=DTD_URL, sha256=DTD_SHA256)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_download(
        lambda: prepare_dtd(
            args.dest,
            archive=args.archive,
            url=args.url,
            sha256=checksum_option(args.sha256),
            progress=not args.no_progress,
        ),
        lambda images: f"Use it with: adlearn.create('draem', anomaly_source={str(images)!r})",
    )


if __name__ == "__main__":
    sys.exit(main())
