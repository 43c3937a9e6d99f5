"""The DVC pipeline the README's set-up runs: after `dvc repro`, a second one has nothing to do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_dvc_pipeline_is_up_to_date_after_setup() -> None:
    if not (REPO_ROOT / "data" / "processed" / "demo").is_dir():
        pytest.fail("data/processed/demo is missing: run `make setup` (dvc pull + dvc repro) first")
    dvc = str(Path(sys.executable).parent / "dvc")
    status = subprocess.run([dvc, "status", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}, f"dvc repro would re-run stages: {status.stdout}"
    dry_run = subprocess.run([dvc, "repro", "--dry"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "Running stage" not in dry_run.stdout, dry_run.stdout
