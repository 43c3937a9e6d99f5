"""Data versions: DVC pointer md5 when tracked, content md5 otherwise, `hub:` for hub ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tasks.io.versioning import TRACKED_PACKAGES, dvc_lock_md5, file_md5, git_commit, package_versions, raw_data_version

POINTER_MD5 = "0123456789abcdef0123456789abcdef.dir"


def _write_pointer(target: Path, md5: str) -> Path:
    pointer = target.with_name(target.name + ".dvc")
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": md5, "size": 10, "nfiles": 1, "path": target.name}]}))
    return pointer


@pytest.fixture
def tracked_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "data" / "raw" / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    _write_pointer(folder, POINTER_MD5)
    return folder


def test_file_inside_dvc_tracked_folder_uses_the_pointer_md5(tracked_folder: Path) -> None:
    assert raw_data_version(str(tracked_folder / "train.tsv")) == POINTER_MD5
    assert raw_data_version(str(tracked_folder)) == POINTER_MD5


def test_relative_path_finds_the_pointer(tracked_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tracked_folder.parent)
    assert raw_data_version("sst2/train.tsv") == POINTER_MD5


def test_pointer_next_to_a_file_wins_over_its_folder(tracked_folder: Path) -> None:
    _write_pointer(tracked_folder / "train.tsv", "fedcba9876543210fedcba9876543210")
    assert raw_data_version(str(tracked_folder / "train.tsv")) == "fedcba9876543210fedcba9876543210"


def test_untracked_file_uses_its_own_md5(tmp_path: Path) -> None:
    content = b"prompt,completion\nhi,hello\n"
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    assert raw_data_version(str(path)) == hashlib.md5(content).hexdigest()


def test_untracked_file_version_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a\n")
    before = raw_data_version(str(path))
    path.write_text("b\n")
    assert raw_data_version(str(path)) != before


def test_folder_hash_changes_when_a_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one")
    (folder / "sub" / "b.txt").write_text("two")
    first = raw_data_version(str(folder))
    assert first == file_md5(folder)
    assert raw_data_version(str(folder)) == first  # stable

    (folder / "sub" / "b.txt").write_text("three")
    changed = raw_data_version(str(folder))
    assert changed != first

    (folder / "sub" / "b.txt").rename(folder / "sub" / "c.txt")
    assert raw_data_version(str(folder)) != changed  # names count too


def test_a_hub_data_set_is_versioned_by_its_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert raw_data_version("stanfordnlp/sst2", commit) == f"hub:stanfordnlp/sst2@{commit}"
    missing = str(tmp_path / "nope.csv")
    assert raw_data_version(missing) == f"missing:{missing}"


def test_dvc_lock_md5(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "prepare": {"cmd": "x", "outs": [{"path": "data/processed", "md5": "aaa.dir"}]},
                    "benchmarks": {"cmd": "y", "outs": [{"path": "data/benchmarks", "md5": "bbb.dir"}]},
                },
            }
        )
    )
    assert dvc_lock_md5("data/benchmarks", lock) == "bbb.dir"
    assert dvc_lock_md5("data/other", lock) is None
    assert dvc_lock_md5("data/benchmarks", tmp_path / "absent.lock") is None


def test_git_commit_outside_a_repo_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("GIT_DIR", raising=False)
    assert git_commit(tmp_path) == "unknown"


def test_package_versions_cover_every_tracked_package() -> None:
    versions = package_versions()
    assert set(versions) == set(TRACKED_PACKAGES)
    assert versions["mlflow"] != "absent"
