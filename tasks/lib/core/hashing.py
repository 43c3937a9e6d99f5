"""One streamed file hasher for every fingerprint: data versions, data-prep inputs, cache keys, model weights."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

BLOCK = 1 << 20


def digest_files(files: Iterable[Path], algorithm: str = "md5", name_of: Callable[[Path], str] | None = None) -> str:
    """Hex digest of the files' contents in the order given, each preceded by `name_of(file)` when given."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    for file in files:
        if name_of is not None:
            digest.update(name_of(file).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    """md5 of a file, or of a folder's files (relative names and contents) in sorted order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.is_file())
        return digest_files(files, "md5", lambda file: str(file.relative_to(path)))
    return digest_files([path])
