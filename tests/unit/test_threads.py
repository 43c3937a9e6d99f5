"""Each pipeline process's CPU threads: its share of the cores among the live holders (tasks.lib.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.lib.config import ConfigError, load_config
from tasks.lib.core import threads
from tests.conftest import write_tiny_config


@pytest.fixture(autouse=True)
def _restore_threads():
    previous, held = torch.get_num_threads(), threads._held
    yield
    torch.set_num_threads(previous)
    threads._held = held


def _holder(holders_dir: Path) -> subprocess.Popen:
    """Another live process holding a share (as a second run would)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (holders_dir / str(process.pid)).touch()
    return process


def test_concurrent_holders_split_the_cores_and_the_share_grows_back_when_one_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "machine_cores", lambda: 8)
    share = threads.hold_share(None, tmp_path)
    assert torch.get_num_threads() == 8
    others = [_holder(tmp_path) for _ in range(3)]
    try:
        assert share.fit(now=share.last_fit + threads.FIT_INTERVAL_S) == 2
        others[0].kill()
        others[0].wait()
        assert share.fit(now=share.last_fit + threads.FIT_INTERVAL_S) == 8 // 3
        assert not (tmp_path / str(others[0].pid)).exists(), "a dead holder's file is cleared"
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert share.fit(now=share.last_fit + threads.FIT_INTERVAL_S) == 8
    share.release()
    assert not (tmp_path / str(os.getpid())).exists()


def test_fit_looks_at_the_holders_at_most_once_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "machine_cores", lambda: 4)
    share = threads.hold_share(None, tmp_path)
    other = _holder(tmp_path)
    try:
        assert share.fit(now=share.last_fit + threads.FIT_INTERVAL_S / 2) == 4
        assert share.fit(now=share.last_fit + threads.FIT_INTERVAL_S) == 2
    finally:
        other.kill()
        other.wait()


def test_a_configured_count_wins_over_the_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "machine_cores", lambda: 8)
    other = _holder(tmp_path)
    try:
        assert threads.hold_share(3, tmp_path).fit() == 3
        assert threads.fit() == 3
    finally:
        other.kill()
        other.wait()


def test_cpu_threads_is_auto_or_a_positive_count(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "unused")
    assert load_config(path).resources.configured_threads() is None
    assert load_config(path, ["resources.cpu_threads=2"]).resources.configured_threads() == 2
    with pytest.raises(ConfigError, match="resources.cpu_threads"):
        load_config(path, ["resources.cpu_threads=0"])
