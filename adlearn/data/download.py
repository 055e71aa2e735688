"""Download and unpack public datasets safely: checksums, resumable downloads, safe extraction.

The real benchmarks are big (MVTec AD is 4.9 GB, VisA 1.8 GB) and come from servers we do not
control, so the helpers here take care of four things:

* **Integrity.** Every archive is checked against a published SHA-256. A constant may be
  ``None`` when no trusted checksum is known: the computed hash is then reported with a warning
  instead of being invented.
* **Resume.** Bytes go to ``<file>.part``. When a connection drops, the next attempt asks the
  server for the rest only (an HTTP ``Range: bytes=N-`` request) and appends to the part file.
* **Safe extraction.** An archive could contain ``/etc/passwd``, ``../../.bashrc`` or a link
  pointing outside the target folder. Every member is checked *before* anything is written, and
  such archives are rejected (`UnsafeArchiveError`).
* **Offline use.** Without internet, the error names the URL and says how to pass an archive
  downloaded by hand (``--archive PATH`` in the scripts of ``data_scripts/``).

`convert_visa_to_mvtec` rewrites VisA's own layout into the MVTec layout that `MVTecDataset`
reads.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import os
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from adlearn.data.errors import DataError
from adlearn.data.layout import mvtec_categories

PathLike = str | Path

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
    "420938113-1629952094/mvtec_anomaly_detection.tar.xz"
)
#: SHA-256 of mvtec_anomaly_detection.tar.xz (5,264,982,680 bytes), as published by anomalib.
MVTEC_SHA256: str | None = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"

VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
#: SHA-256 of VisA_20220922.tar (1,929,840,640 bytes), as published by anomalib.
VISA_SHA256: str | None = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"


DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
#: SHA-256 of dtd-r1.0.1.tar.gz (the Describable Textures Dataset, about 625 MB), as published by anomalib
#: (``anomalib.models.image.draem.lightning_model.DTD_DOWNLOAD_INFO``).
DTD_SHA256: str | None = "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"


class DownloadError(RuntimeError):
    """A download failed (offline, server error, interrupted too often)."""


class ChecksumError(DownloadError):
    """A file's SHA-256 is not the published one: a corrupt or different file."""


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the target folder."""


# =========================================================================== checksums
def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: PathLike, expected: str | None) -> str:
    """Compare ``path``'s SHA-256 with ``expected``; with ``None``, warn and report the hash."""
    actual = sha256_file(path)
    if expected is None:
        warnings.warn(
            f"no published checksum to compare {path} with; its sha256 is {actual}. "
            f"Compare it with a trusted source before relying on the data.",
            stacklevel=2,
        )
    elif actual != expected.lower():
        raise ChecksumError(
            f"{path} has sha256 {actual}, expected {expected.lower()}: the file is "
            f"corrupt or not the published one. Delete it and download it again."
        )
    return actual


# =========================================================================== downloads
class _Interrupted(Exception):
    """The connection ended before the whole file arrived (worth resuming)."""


def _offline_message(url: str, reason: object, part: Path) -> str:
    resume = f" The {part.stat().st_size} bytes already in {part} will be reused next time." if part.exists() else ""
    return (
        f"could not download {url} ({reason}). Are you offline? Download the file by hand "
        f"(e.g. in a browser) and pass it with --archive PATH (archive=PATH in Python)." + resume
    )


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety, not a requirement
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name)


def _fetch(url: str, part: Path, timeout: float, chunk_size: int, progress: bool) -> None:
    """Fetch ``url`` into ``part``, continuing after the bytes already there."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "adlearn-downloader"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # "range not satisfiable": we already have every byte
            return
        raise DownloadError(f"the server answered HTTP {error.code} ({error.reason}) for {url}") from error
    except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
        raise DownloadError(_offline_message(url, getattr(error, "reason", error), part)) from error
    with response:
        resumed = start > 0 and response.status == 206 and _range_start(response) == start
        if not resumed:
            start = 0  # the server sent the whole file (it ignored or refused our Range)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        written = start
        bar = _progress_bar(total, start, part.name.removesuffix(".part"), progress)
        try:
            with open(part, "ab" if resumed else "wb") as file:
                while True:
                    try:
                        block = response.read(chunk_size)
                    except (TimeoutError, http.client.IncompleteRead, ConnectionError) as error:
                        raise _Interrupted(error) from error
                    if not block:
                        break
                    file.write(block)
                    written += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and written < total:
            raise _Interrupted(f"got {written} of {total} bytes")


def _range_start(response) -> int | None:
    """First byte offset of a 206 answer, from ``Content-Range: bytes START-END/TOTAL``."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def download_file(
    url: str,
    dest: PathLike,
    sha256: str | None = None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (resuming a previous ``dest.part``) and check its SHA-256.

    A file already at ``dest`` with the right checksum is not downloaded again. After an
    interrupted connection the download resumes up to ``retries`` times; after that the part
    file stays, and running the same call again continues from it.
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            return dest
        print(f"{dest} exists but its checksum is wrong; downloading it again")
        dest.unlink()
    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout, chunk_size, progress)
            break
        except _Interrupted as error:
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"the download of {url} was interrupted ({error}; {attempt} "
                    f"attempt{'s' if attempt > 1 else ''}). "
                    f"Run the same command again to resume from {part} "
                    f"({part.stat().st_size if part.exists() else 0} bytes so far)."
                ) from error
    try:
        verify_checksum(part, sha256)
    except ChecksumError:
        part.unlink()  # a corrupt part file would poison every later resume
        raise
    os.replace(part, dest)
    return dest


# =========================================================================== safe extraction
def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _member_target(name: str, root: Path, archive: Path) -> Path:
    """Where member ``name`` would land; an error if that is outside ``root``."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise UnsafeArchiveError(
            f"{archive} contains an absolute path {name!r}; refusing to "
            f"extract an archive that writes outside its folder"
        )
    if ".." in PurePosixPath(clean).parts:
        raise UnsafeArchiveError(
            f"{archive} contains a path with '..' ({name!r}) that could "
            f"escape the target folder; refusing to extract it"
        )
    target = Path(os.path.normpath(root / clean))
    if not _inside(target, root):
        raise UnsafeArchiveError(f"{archive} member {name!r} would land outside {root}")
    return target


def _check_tar(tar: tarfile.TarFile, root: Path, archive: Path) -> None:
    for member in tar.getmembers():
        target = _member_target(member.name, root, archive)
        if member.issym():
            link = member.linkname.replace("\\", "/")
            pointed = Path(os.path.normpath(target.parent / link))
            if link.startswith("/") or not _inside(pointed, root):
                raise UnsafeArchiveError(
                    f"{archive} contains a symbolic link {member.name!r} -> "
                    f"{member.linkname!r} pointing outside the target folder"
                )
        elif member.islnk():
            try:
                _member_target(member.linkname, root, archive)
            except UnsafeArchiveError as error:
                raise UnsafeArchiveError(
                    f"{archive} contains a hard link {member.name!r} -> "
                    f"{member.linkname!r} pointing outside the target "
                    f"folder"
                ) from error
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive} contains a device or pipe {member.name!r}; refusing to extract it")


def _check_zip(archive_zip: zipfile.ZipFile, root: Path, archive: Path) -> None:
    for info in archive_zip.infolist():
        _member_target(info.filename, root, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            # zipfile would write a link as a small text file; neither is what the author meant
            raise UnsafeArchiveError(
                f"{archive} contains a symbolic link {info.filename!r}; links in zip files are not extracted"
            )


def safe_extract(archive: PathLike, dest: PathLike) -> Path:
    """Extract a tar (any compression) or zip archive into ``dest`` after checking every member.

    Rejected, before anything is written: absolute paths, paths with ``..``, symbolic or hard
    links that point outside ``dest``, device files, and links in zip files.
    """
    archive = Path(archive).expanduser()
    root = Path(os.path.abspath(Path(dest).expanduser()))
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as archive_zip:
            _check_zip(archive_zip, root, archive)
            archive_zip.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            _check_tar(tar, root, archive)
            if hasattr(tarfile, "data_filter"):  # Python's own checks as a second line of defence
                tar.extractall(root, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(root)
    else:
        raise DataError(f"{archive} is neither a tar nor a zip archive (corrupt download?)")
    return root


# =========================================================================== MVTec AD
def _find_mvtec_root(folder: Path) -> Path:
    """The folder holding the categories: ``folder`` itself or its single wrapping subfolder."""
    if mvtec_categories(folder):
        return folder
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if mvtec_categories(child):
            return child
    raise DataError(
        f"no MVTec-style category (a folder with train/ and test/) found in {folder} "
        f"after extraction; is this the right archive?"
    )


def obtain_archive(
    url: str, dest: Path, name: str, archive: PathLike | None, sha256: str | None, progress: bool
) -> Path:
    """Download ``url`` to ``dest/name`` (resumable, checked), or check the already downloaded ``archive``."""
    if archive is None:
        return download_file(url, dest / name, sha256, progress=progress)
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist; check the --archive path")
    verify_checksum(archive, sha256)
    return archive


def prepare_mvtec(
    dest: PathLike,
    archive: PathLike | None = None,
    url: str = MVTEC_URL,
    sha256: str | None = MVTEC_SHA256,
    progress: bool = True,
) -> Path:
    """Download (or take ``archive``), verify and extract MVTec AD into ``dest``; return root."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    path = obtain_archive(url, dest, "mvtec_anomaly_detection.tar.xz", archive, sha256, progress)
    print(f"extracting {path} into {dest} ...")
    safe_extract(path, dest)
    root = _find_mvtec_root(dest)
    print(f"MVTec AD categories in {root}: {', '.join(mvtec_categories(root))}")
    return root


# =========================================================================== VisA
def _find_visa_root(folder: Path) -> Path:
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "split_csv" / "1cls.csv").is_file():
            return candidate
    raise DataError(
        f"split_csv/1cls.csv not found in {folder} or its subfolders; is this the VisA archive (VisA_20220922.tar)?"
    )


def _binarize_mask(source: Path, target: Path) -> None:
    """VisA masks hold one grey level per defect; MVTec-style masks are 0 (good) or 255."""
    with Image.open(source) as mask:
        values = np.asarray(mask.convert("L"))
    Image.fromarray(((values > 0) * 255).astype(np.uint8)).save(target)


_NORMAL_LABELS = {"normal", "good"}
_ANOMALY_LABELS = {"anomaly", "abnormal", "anomalous", "bad"}


def convert_visa_to_mvtec(visa_root: PathLike, dest: PathLike) -> Path:
    """Rewrite an extracted VisA tree into the MVTec layout, following ``split_csv/1cls.csv``.

    VisA keeps ``<cat>/Data/Images/{Normal,Anomaly}/`` and ``<cat>/Data/Masks/Anomaly/`` and
    says in ``split_csv/1cls.csv`` (columns ``object, split, label, image, mask``) which image
    is used for training and which for testing. The result is::

        <dest>/<cat>/train/good/           normal training images (copied as they are)
        <dest>/<cat>/test/good/            normal test images
        <dest>/<cat>/test/bad/             anomalous test images
        <dest>/<cat>/ground_truth/bad/<stem>_mask.png   masks, binarized to 0/255
    """
    visa_root, dest = Path(visa_root).expanduser(), Path(dest).expanduser()
    csv_path = visa_root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path} not found; pass the folder that holds split_csv/ and the "
            f"category folders of the extracted VisA archive"
        )
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    required = {"object", "split", "label", "image", "mask"}
    if not rows or not required <= set(rows[0]):
        raise DataError(f"{csv_path} must have the columns {sorted(required)}")
    planned: dict[Path, Path] = {}  # target -> source, to catch two sources with one name
    masks: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for row in rows:
        category, split = row["object"].strip(), row["split"].strip().lower()
        label = row["label"].strip().lower()
        source = visa_root / row["image"].strip()
        if not source.is_file():
            missing.append(str(source))
            continue
        if label in _NORMAL_LABELS:
            folder = "good"
        elif label in _ANOMALY_LABELS:
            folder = "bad"
        else:
            raise DataError(f"{csv_path}: unknown label {row['label']!r} (expected normal or anomaly)")
        if split not in ("train", "test") or (split == "train" and folder == "bad"):
            raise DataError(
                f"{csv_path}: unexpected split {row['split']!r} for {source}; the "
                f"1-class split has normal train images and normal/anomalous test ones"
            )
        target = dest / category / split / folder / source.name
        if target in planned:
            raise DataError(f"two VisA images would both become {target}: {planned[target]} and {source}")
        planned[target] = source
        if folder == "bad":
            mask = visa_root / row["mask"].strip() if row["mask"].strip() else None
            if mask is None or not mask.is_file():
                missing.append(f"mask of {source} ({mask})")
                continue
            mask_target = dest / category / "ground_truth" / "bad" / f"{source.stem}_mask.png"
            masks.append((mask, mask_target))
    if missing:
        raise DataError(
            f"{len(missing)} files listed in {csv_path} are missing, e.g. "
            f"{missing[:3]}; the VisA extraction is incomplete, extract it again"
        )
    for target, source in planned.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for source, target in masks:
        target.parent.mkdir(parents=True, exist_ok=True)
        _binarize_mask(source, target)
    return dest


def prepare_visa(
    dest: PathLike,
    archive: PathLike | None = None,
    url: str = VISA_URL,
    sha256: str | None = VISA_SHA256,
    keep_raw: bool = False,
    progress: bool = True,
) -> Path:
    """Download (or take ``archive``), verify, extract and convert VisA; returns ``<dest>/visa``."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    path = obtain_archive(url, dest, "VisA_20220922.tar", archive, sha256, progress)
    raw = dest / "visa_raw"
    print(f"extracting {path} into {raw} ...")
    safe_extract(path, raw)
    out = convert_visa_to_mvtec(_find_visa_root(raw), dest / "visa")
    if not keep_raw:
        shutil.rmtree(raw)
    print(f"VisA categories in MVTec layout in {out}: {', '.join(mvtec_categories(out))}")
    return out


# =========================================================================== DTD (DRÆM's textures)
def _find_dtd_images(folder: Path) -> Path:
    """``.../dtd/images`` (47 texture classes, one folder each) under ``folder``."""
    for candidate in (folder / "dtd" / "images", folder / "images", *sorted(folder.glob("*/dtd/images"))):
        if candidate.is_dir() and any(candidate.rglob("*.jpg")):
            return candidate
    raise DataError(
        f"no dtd/images folder with .jpg textures found in {folder} after extraction; "
        "is this the right archive (dtd-r1.0.1.tar.gz)?"
    )


def prepare_dtd(
    dest: PathLike,
    archive: PathLike | None = None,
    url: str = DTD_URL,
    sha256: str | None = DTD_SHA256,
    progress: bool = True,
) -> Path:
    """Download (or take ``archive``), verify and extract DTD into ``dest``; returns the images folder,
    ready for DRÆM's ``anomaly_source=`` (or `PerlinAnomalyGenerator`'s ``anomaly_source_path``)."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    path = obtain_archive(url, dest, "dtd-r1.0.1.tar.gz", archive, sha256, progress)
    print(f"extracting {path} into {dest} ...")
    safe_extract(path, dest)
    images = _find_dtd_images(dest)
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    print(f"DTD: {sum(1 for _ in images.rglob('*.jpg'))} images in {len(classes)} texture classes under {images}")
    return images


# =========================================================================== the download scripts
# Every script in data_scripts/ takes the same options and reports the same way; these three helpers are
# that shared part, so each script only names its dataset, its defaults and its "use it with" line.
def archive_arguments(
    parser: argparse.ArgumentParser, *, dest: str, archive_name: str, url: str, sha256: str | None, what: str = ""
) -> argparse.ArgumentParser:
    """Add ``--dest --archive --url --sha256 --no-progress`` (``what``: e.g. "of the videos" in their help)."""
    suffix = f" {what}" if what else ""
    parser.add_argument("--dest", default=dest, help="folder to extract into (default: %(default)s)")
    parser.add_argument("--archive", default=None, help=f"use this already downloaded {archive_name}")
    parser.add_argument("--url", default=url, help=f"download URL{suffix} (default: the official one)")
    parser.add_argument(
        "--sha256", default=sha256, help=f"expected SHA-256{suffix}; 'none' only reports the computed one"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def checksum_option(value: str | None) -> str | None:
    """A ``--sha256`` value: ``none`` (any case) means "do not check, report the computed hash"."""
    return None if value is None or str(value).lower() == "none" else value


def run_download(prepare: Callable[[], Path], use_it: Callable[[Path], str]) -> int:
    """Run ``prepare()``; print ``done. <use_it(root)>`` and return 0, or the error on stderr and return 1."""
    try:
        root = prepare()
    except (DownloadError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"done. {use_it(root)}")
    return 0
