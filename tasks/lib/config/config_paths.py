"""Where a config's relative paths point: resolved once, when the config loads, against its project root.

The project root is the nearest folder above the config file that holds `pyproject.toml` or `dvc.yaml` (for
`configs/demo.yaml`, the checkout), or the config's `project_root` key when it sets one; a config outside any
project reads its paths from the working directory. The loaded config carries absolute paths, so every process
that gets it (Ray workers, work-pool workers, torchrun ranks, a resumed run) reads the same files wherever it
starts. Hashes of a config see the paths relative to the root again, so a checkout moved elsewhere hashes the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT_MARKERS = ("pyproject.toml", "dvc.yaml")

# Every path a config names, by dotted key ("*" stands for each entry of a mapping) and what it may hold:
# local: a file or folder; local_or_hub: a file, a folder or a hub id; uri: a store address (sqlite:///, file:).
PATH_KEYS: tuple[tuple[str, str], ...] = (
    ("output_dir", "local"),
    ("model.name_or_path", "local_or_hub"),
    ("data.path", "local_or_hub"),
    ("data.validation_path", "local_or_hub"),
    ("data.test_path", "local_or_hub"),
    ("data.replay.path", "local_or_hub"),
    ("data.processed_dir", "local"),
    ("train.accelerate_config", "local"),
    ("forgetting.data_dir", "local"),
    ("forgetting.cache_dir", "local"),
    ("forgetting.custom.*.path", "local"),
    ("tracking.uri", "uri"),
    ("tracking.artifact_location", "uri"),
    ("sweep.storage", "uri"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".yaml", ".yml", ".txt", ".gguf")
_FILE_URI = re.compile(r"^(sqlite:///|file:)(?!/)(.+)$")


def project_root(start: Path) -> Path:
    """The nearest folder holding a project marker above a config file (or at or above a folder); the working
    directory when none does."""
    start = Path(start).resolve()
    for folder in [start, *start.parents] if start.is_dir() else start.parents:
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return Path.cwd().resolve()


def resolve_paths(dump: dict[str, Any], root: Path) -> dict[str, Any]:
    """`dump` (a config as plain data) with every relative path made absolute under `root`."""
    return _rewrite(dump, lambda value, kind: _absolute(value, kind, root))


def relative_paths(dump: dict[str, Any], root: Path) -> dict[str, Any]:
    """`dump` with every path under `root` written relative to it again (what a hash of the config sees)."""
    return _rewrite(dump, lambda value, kind: relative_to_root(value, root))


def _rewrite(dump: dict[str, Any], change: Callable[[str, str], str]) -> dict[str, Any]:
    for parent, key, kind in _path_slots(dump):
        parent[key] = change(parent[key], kind)
    return dump


def _path_slots(dump: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    for dotted, kind in PATH_KEYS:
        parents = [dump]
        *sections, leaf = dotted.split(".")
        for part in sections:
            parents = [
                child
                for parent in parents
                for child in (parent.values() if part == "*" else [parent.get(part)])
                if isinstance(child, dict)
            ]
        yield from ((parent, leaf, kind) for parent in parents if isinstance(parent.get(leaf), str))


def _absolute(value: str, kind: str, root: Path) -> str:
    if kind == "uri":
        match = _FILE_URI.match(value)
        if match:
            return match.group(1) + str(root / match.group(2))
        return value if "://" in value or ":" in value.split("/")[0] else _absolute(value, "local", root)
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    if kind == "local_or_hub" and _is_hub_id(value, root):
        return value
    return str(root / path)


def _is_hub_id(value: str, root: Path) -> bool:
    """`org/name` that is neither a path under the root nor a typo of one (its `org/` folder exists there)."""
    return (
        _HUB_ID.match(value) is not None
        and not value.lower().endswith(_FILE_SUFFIXES)
        and not (root / value).exists()
        and not (root / value).parent.is_dir()
    )


def relative_to_root(value: str, root: Path) -> str:
    """`value` with the root's prefix dropped where it holds a path under `root`."""
    prefix = str(root) + "/"
    return value.replace(prefix, "", 1) if prefix in value else value
