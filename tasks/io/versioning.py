"""Versions every run records: the DVC md5 of the data, the git commit, the package versions."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from tasks.lib.core.hashing import file_md5
from tasks.lib.dataset.data_formats import is_hub_id, resolved_hub_revision

TRACKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "lm-eval", "prefect", "mlflow", "dvc")


def _dvc_pointer_md5(path: Path) -> str | None:
    """The md5 in the `.dvc` pointer of `path` or of the folder holding it (e.g. data/raw/sst2.dvc)."""
    for candidate in (p for p in [path, *path.parents] if p.name):
        pointer = candidate.with_name(candidate.name + ".dvc")
        if pointer.is_file():
            outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
            return outs[0].get("md5")
    return None


def raw_data_version(data_path: str, hub_revision: str | None = None) -> str:
    """DVC md5 when the data is DVC-tracked; else the file's (or folder's) own md5; for a hub data set, the
    commit its revision resolves to."""
    path = Path(data_path)
    if not path.exists():
        if is_hub_id(data_path):
            return f"hub:{data_path}@{resolved_hub_revision(data_path, hub_revision)}"
        return f"missing:{data_path}"
    return _dvc_pointer_md5(path.resolve()) or _dvc_pointer_md5(path) or file_md5(path)


def dvc_lock_md5(out_path: str, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The md5 dvc.lock records for a stage output, when a DVC stage produced it."""
    if not lock_file.is_file():
        return None
    lock = yaml.safe_load(lock_file.read_text()) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == out_path:
                return out.get("md5")
    return None


def git_commit(cwd: Path | None = None) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{commit}-dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance(config, data) -> dict[str, str]:
    """What a run, a logged model and a registered version record to be traced back: data, config, code, libraries.

    `config` is a RunConfig, `data` a DataRef (not imported here: this module stays free of the pipeline's types).
    """
    return {
        "data_version": data.raw_version,
        "processed_data_fingerprint": data.fingerprint,
        "config_hash": config.fingerprint(),
        "git_commit": git_commit(),
        "seed": str(config.seed),
        **{f"version.{name}": version for name, version in package_versions().items()},
    }


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what benchmark and demo reports print)."""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine() or "cpu"
