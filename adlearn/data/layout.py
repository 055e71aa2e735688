"""Folder layout helpers: which files are images, how masks are found, which folders are categories.

Pure ``pathlib`` code (no torch), shared by the datasets and by the download scripts, which
should start quickly.
"""

from __future__ import annotations

from pathlib import Path

from adlearn.data.errors import DataError

PathLike = str | Path

#: File suffixes read as images (compared case-insensitively, so VisA's ``.JPG`` works).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: PathLike, what: str = "image folder") -> list[Path]:
    """All image files of ``folder``, sorted by name; an error for anything surprising in it.

    ``what`` describes the folder in error messages (e.g. "MVTec train folder").
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        hint = " (it is a file, not a folder)" if folder.exists() else ""
        raise DataError(f"{what} {folder} does not exist{hint}; check the path")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if is_image_file(p)]
    subfolders = [p.name for p in entries if p.is_dir()]
    others = [p.name for p in entries if not p.is_dir() and not is_image_file(p)]
    if not images:
        hint = ""
        if others:
            hint += f" It holds other files: {others[:5]}."
        if subfolders:
            hint += f" It has subfolders {subfolders[:5]}: pass one of them (e.g. {folder / subfolders[0]}) instead."
        raise DataError(f"{what} {folder} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}).{hint}")
    if others or subfolders:
        unexpected = others + [name + "/" for name in subfolders]
        raise DataError(
            f"{what} {folder} contains {len(unexpected)} entries that are not images: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. Move them out of the folder "
            f"(subfolders are not searched) or convert them to one of {IMAGE_EXTENSIONS}."
        )
    return images


def find_mask(mask_dir: Path, image_path: Path) -> Path | None:
    """The mask of ``image_path`` in ``mask_dir``: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    for name in (image_path.stem + "_mask", image_path.stem):
        for suffix in (".png", *[s for s in IMAGE_EXTENSIONS if s != ".png"]):
            for candidate in (mask_dir / (name + suffix), mask_dir / (name + suffix.upper())):
                if candidate.is_file():
                    return candidate
    return None


def mvtec_categories(root: PathLike) -> list[str]:
    """Category folders under an MVTec-style root (those with a ``train`` or ``test`` folder)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))
