"""Folders and files appear whole or not at all: prepared data, benchmarks, models, markers, caches, cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.lib.core.publish import publish_dir, publish_text


def _write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def test_a_failing_fill_publishes_nothing_and_keeps_the_previous_folder(tmp_path: Path) -> None:
    out = publish_dir(tmp_path / "out", _write("a.txt", "first"))
    assert (out / "a.txt").read_text() == "first"

    def broken(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        publish_dir(out, broken)
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_replace_swaps_the_folder_whole(tmp_path: Path) -> None:
    out = publish_dir(tmp_path / "out", _write("a.txt", "first"))
    publish_dir(out, _write("b.txt", "second"))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_content_addressed_publish_keeps_the_first_copy(tmp_path: Path) -> None:
    out = publish_dir(tmp_path / "fp", _write("a.txt", "first"), replace=False)
    publish_dir(out, _write("a.txt", "second"), replace=False)
    assert (out / "a.txt").read_text() == "first"


def test_a_kill_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    backup = tmp_path / ".out.old"
    backup.mkdir()
    (backup / "a.txt").write_text("previous")
    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "out", lambda folder: (_ for _ in ()).throw(RuntimeError("fail")))
    assert (tmp_path / "out" / "a.txt").read_text() == "previous"


def test_a_published_text_file_replaces_the_old_one_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "card.md"
    publish_text(target, "first")
    publish_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(path.name for path in target.parent.iterdir()) == ["card.md"]
