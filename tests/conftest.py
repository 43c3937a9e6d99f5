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
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"

# The integration files from longest to shortest (`--durations`, 2 cores), run before everything else so that the
# two xdist workers end together; pytest-xdist's own order (most tests first, switched off in pyproject.toml) ran
# these one-test files last, one worker finishing them alone.
LONGEST_FIRST = [
    "test_flow.py",
    "test_kills.py",
    "test_sweep.py",
    "test_stack.py",
    "test_ray.py",
    "test_deployment.py",
    "test_resume.py",
    "test_ddp.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their collection order


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


@pytest.fixture(scope="session")
def benchmark_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The forgetting benchmarks converted from the DVC-pulled raw data (what `dvc repro` makes)."""
    from tasks.lib.general_benchmarks.benchmark_data import prepare_benchmarks

    out = tmp_path_factory.mktemp("benchmarks") / "benchmarks"
    prepare_benchmarks(RAW_DATA_DIR, out)
    return out


def write_tiny_config(
    root: Path,
    model_dir: Path,
    benchmark_dir: Path,
    overrides: dict | None = None,
    rows: int = 240,
    relative: bool = False,
) -> Path:
    """configs/tiny.yaml for the tiny model on the first `rows` of real SST-2, everything under `root`;
    `overrides` (dotted key -> value) go through the config's own override rule. `relative`: `root` is a project
    (a pyproject.toml, the model linked in as models/tiny) and the config, in root/configs/, names its paths
    relative to it, as a user's config does."""
    import json

    import yaml

    from tasks.lib.config import apply_overrides

    data_file = root / "sst2_slice.tsv"
    if not data_file.exists():
        lines = (RAW_DATA_DIR / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
        data_file.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    under_root = {
        "output_dir": str(root / "runs"),
        "model.name_or_path": str(model_dir),
        "data.path": str(data_file),
        "data.max_rows": None,
        "data.processed_dir": str(root / "processed"),
        "forgetting.data_dir": str(benchmark_dir),
        "forgetting.cache_dir": str(root / "score_cache"),
        "tracking.uri": f"sqlite:///{root / 'mlflow.db'}",
        "tracking.artifact_location": (root / "mlartifacts").as_uri(),
    }
    path = root / "tiny.yaml"
    if relative:
        (root / "pyproject.toml").write_text("[project]\nname = 'user-project'\n")
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "tiny").unlink(missing_ok=True)
        (root / "models" / "tiny").symlink_to(model_dir)
        under_root["model.name_or_path"] = str(root / "models" / "tiny")
        under_root = {
            key: value.replace(f"{root}/", "") if isinstance(value, str) else value for key, value in under_root.items()
        }
        under_root["tracking.artifact_location"] = "mlartifacts"
        (root / "configs").mkdir(exist_ok=True)
        path = root / "configs" / "tiny.yaml"
    settings = {**under_root, **(overrides or {})}
    config = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    config = apply_overrides(config, [f"{key}={json.dumps(value)}" for key, value in settings.items()])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def tiny_config_file(tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path) -> Path:
    return write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir)
