"""Publish a folder or a file atomically: it is filled under a hidden temporary name and appears whole, or not at all.

Used for everything the pipeline writes as a folder that others read: prepared data, converted benchmarks, the
converted demo model and the merged model; `publish_text` for the files others read: step markers, data stats,
cached base scores, the model card. A reader never sees a half-written folder; a kill while filling leaves
only a hidden `.<name>.tmp-*` folder, never something that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _backup_of(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.old")


def recover(out_dir: Path) -> None:
    """A kill between moving the old folder aside and moving the new one in leaves only the backup: restore it."""
    backup = _backup_of(out_dir)
    if backup.is_dir() and not out_dir.exists():
        backup.rename(out_dir)


def publish_dir(out_dir: Path, fill: Callable[[Path], object], replace: bool = True) -> Path:
    """Call `fill(folder)` on an empty temporary sibling of out_dir, then move it to out_dir.

    If fill raises, nothing is published and out_dir is left as it was. replace=False is for content-addressed
    folders: when another process published out_dir first, its copy (identical by construction) is kept.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        fill(tmp)
        if out_dir.exists():
            if not replace:
                return out_dir
            backup = _backup_of(out_dir)
            shutil.rmtree(backup, ignore_errors=True)
            out_dir.rename(backup)
            tmp.rename(out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            try:
                tmp.rename(out_dir)
            except OSError:
                if replace or not out_dir.is_dir():
                    raise  # not a concurrent publisher of the same content: a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def publish_text(path: Path, text: str) -> Path:
    """Write `text` to `path` under a unique hidden temporary name, then move it in: a reader (or a concurrent
    writer of the same file) never sees half of it, and a kill leaves the old file or none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
