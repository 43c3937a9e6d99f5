"""Shared fixtures: the tiny in-process model (fast tier) and paths to the real data in the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL_DIR = REPO_ROOT / "models" / "smollm2-135m-instruct"
RAW_DATA_DIR = REPO_ROOT / "data" / "raw"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The prepared SmolLM2 folder (`dvc repro prepare_model`); tests that need it fail loudly without it."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{DEMO_MODEL_DIR} is missing: run `dvc repro prepare_model` (the README's set-up does)")
    return DEMO_MODEL_DIR
