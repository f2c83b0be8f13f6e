"""Files an operating system leaves in a data folder: never images, never errors, always listed.

A folder copied from a Mac holds an AppleDouble `._name.jpeg` beside every image (resource fork and
Finder info, magic bytes 0x00051607) and a `.DS_Store` per folder; a zip made on a Mac adds a `__MACOSX/`
folder of the same; Windows adds `Thumbs.db` and `desktop.ini`. `._name.jpeg` carries an image suffix,
so without this check it would be decoded and fail as "not an image". Every reader of a folder or table
(the Kaggle folder source, the label-table source, the predict_dir listing) asks `metadata_reason`
first and lists what it names as "(ignored)", under either data.on_bad_file policy.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath

IGNORED = "(ignored)"  # the suffix of every skipped-file reason that never stops a run
_WINDOWS_FILES = ("thumbs.db", "desktop.ini")
_MAC_ARCHIVE_FOLDER = "__MACOSX"


def metadata_reason(path: str | Path, below: str | Path | None = None) -> str | None:
    """Why `path` is operating-system metadata rather than data, or None when it is not.

    Only the part of `path` below `below` (the data folder being read) is looked at, so a data set kept
    under a hidden folder (`~/.cache/...`) is not itself taken for metadata. Metadata are: AppleDouble
    `._*` files, `.DS_Store`, any other hidden (dot) file or folder, anything inside `__MACOSX/`, and
    Windows' `Thumbs.db` and `desktop.ini` (any case). The reason ends with "(ignored)". Without `below`
    the whole path is judged.
    """
    relative = PurePath(os.path.relpath(path, below)) if below is not None else PurePath(path)
    parts = [part for part in relative.parts if part not in (".", "..")]
    if not parts:
        return None
    *folders, name = parts
    if _MAC_ARCHIVE_FOLDER in parts:
        return f"macOS archive metadata (a {_MAC_ARCHIVE_FOLDER} folder), not an image {IGNORED}"
    hidden = [folder for folder in folders if folder.startswith(".")]
    if hidden:
        return f"inside a hidden folder, not data {IGNORED}"
    if name.startswith("._"):
        return f"macOS AppleDouble metadata (the resource fork of the file beside it), not an image {IGNORED}"
    if name == ".DS_Store":
        return f"macOS folder metadata, not an image {IGNORED}"
    if name.startswith("."):
        return f"hidden file, not an image {IGNORED}"
    if name.lower() in _WINDOWS_FILES:
        return f"Windows folder metadata, not an image {IGNORED}"
    return None


def is_ignored(reason: str) -> bool:
    """Whether a skipped-file reason is one that never stops a run (metadata, stray non-image files)."""
    return reason.endswith(IGNORED)
