"""Relative paths in a config point at the project, whatever directory a process starts in; a resume finds the
run and the overrides it started with."""

import shutil
from pathlib import Path

import pytest

from tasks.lib.config import ConfigError, load_config, read_run_config
from tasks.lib.run.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path, model_path: str = "models/base", name: str = "project") -> Path:
    """A project folder (pyproject.toml) with its config under configs/ and every path in it relative."""
    root = tmp_path / name
    (root / "configs").mkdir(parents=True)
    (root / "models" / "base").mkdir(parents=True)
    (root / "models" / "base" / "config.json").write_text("{}")
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (root / "data" / "mine.jsonl").write_text("".join(f'{{"text": "document {i}"}}\n' for i in range(12)))
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "configs" / "run.yaml").write_text(
        f"name: run\nmodel: {{name_or_path: {model_path}}}\ndata: {{path: data/train.jsonl}}\n"
        "registry: {model_name: run}\n"
        "forgetting: {enabled: false, benchmarks: [mine], custom: {mine: {path: data/mine.jsonl, kind: perplexity}}}\n"
        "tracking: {uri: 'sqlite:///runs/mlflow.db', artifact_location: runs/artifacts}\n"
    )
    return root


def test_paths_resolve_against_the_project_from_any_working_directory(tmp_path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.chdir(tmp_path)  # not the project root
    config = load_config(root / "configs" / "run.yaml")
    assert config.project_root == str(root.resolve())
    assert config.model.name_or_path == str(root / "models" / "base")
    assert config.data.path == str(root / "data" / "train.jsonl")
    assert config.output_dir == str(root / "runs")
    assert config.tracking.uri == f"sqlite:///{root}/runs/mlflow.db"
    assert config.tracking.artifact_location == str(root / "runs" / "artifacts")
    assert config.forgetting.custom["mine"].path == str(root / "data" / "mine.jsonl")
    check_inputs(config)  # the relative model folder is found from tmp_path


def test_hub_ids_stay_hub_ids_and_a_typo_of_a_local_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hub = load_config(_project(tmp_path, "HuggingFaceTB/SmolLM2-135M", "hub") / "configs" / "run.yaml")
    assert hub.model.name_or_path == "HuggingFaceTB/SmolLM2-135M"
    typo = load_config(_project(tmp_path, "models/bsae", "typo") / "configs" / "run.yaml")
    with pytest.raises(ConfigError, match="model.name_or_path: .*models/bsae does not exist.*did you mean"):
        check_inputs(typo)


def test_a_moved_project_hashes_the_same_and_its_run_config_keeps_absolute_paths(tmp_path):
    first = load_config(_project(tmp_path) / "configs" / "run.yaml")
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "project", moved)
    second = load_config(moved / "configs" / "run.yaml")
    assert first.data.path != second.data.path
    assert first.fingerprint() == second.fingerprint()
    assert first.outcome_fingerprint() == second.outcome_fingerprint()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(second.model_dump_json())
    assert read_run_config(run_dir).data.path == str(moved / "data" / "train.jsonl")


def test_the_demo_config_reads_the_checkout_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "demo.yaml")
    assert Path(config.model.name_or_path).is_relative_to(REPO)
    assert Path(config.forgetting.data_dir) == REPO / "data" / "benchmarks"


def test_resume_settings_reapply_the_overrides_a_run_started_with_and_refuse_an_unknown_id(tmp_path, monkeypatch):
    import json

    from flows.verbs import resume_settings
    from tasks.lib.core.errors import UserError

    root = _project(tmp_path)
    config = str(root / "configs" / "run.yaml")
    run_dir = load_config(config).runs_dir() / "20261207-101500-ab12"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(load_config(config, ["lora.r=4"]).model_dump_json())
    (run_dir / "overrides.json").write_text(json.dumps(["lora.r=4"]))
    (run_dir / "mlflow_run.json").write_text('{"parent_run_id": "x"}')  # what marks a started run
    assert resume_settings(config, [], "20261207-101500-ab12") == (config, ["lora.r=4"])
    assert resume_settings(config, ["lora.r=8"], "20261207-101500-ab12")[1] == ["lora.r=8"]  # checked later
    monkeypatch.chdir(root / "configs")  # anywhere in the project, no config file: the run's own config
    assert resume_settings(None, [], "20261207-101500-ab12") == (str(run_dir / "config.json"), [])
    assert load_config(str(run_dir / "config.json")).lora.r == 4
    with pytest.raises(UserError, match="closest: 20261207-101500-ab12"):
        resume_settings(config, [], "20261207-101500-ab21")


def test_without_a_tracking_uri_every_directory_uses_the_projects_store(tmp_path, monkeypatch):
    """Run from another directory, the default store is still the project's mlruns.db (and mlartifacts/ for a new
    experiment), not a new one in the working directory; $MLFLOW_TRACKING_URI, when set, is left to decide."""
    from tasks.lib.config import load_config
    from tests.conftest import REPO_ROOT

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO_ROOT / "configs" / "demo.yaml")
    assert config.tracking.uri == f"sqlite:///{REPO_ROOT / 'mlruns.db'}"
    assert config.tracking.artifact_location == (REPO_ROOT / "mlartifacts").as_uri()
    assert config.portable_dump()["tracking"]["uri"] == "sqlite:///mlruns.db"  # the same hash on any checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_config(REPO_ROOT / "configs" / "demo.yaml").tracking.uri is None
