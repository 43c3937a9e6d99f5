"""Prefect task: prepare the data set (skipped when the prepared copy matches its inputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import retry_only_transient
from tasks.io.models import load_tokenizer
from tasks.io.versioning import raw_data_version
from tasks.lib.config import RunConfig
from tasks.lib.dataset.prepare import input_fingerprint, is_up_to_date, prepare_dataset
from tasks.lib.run.refs import DataRef


def processed_root(config: RunConfig) -> Path:
    """Every prepared version of this config's data set: `<processed_dir>/<name>/<fingerprint>/`."""
    return Path(config.data.processed_dir) / config.name


def stats_path(config: RunConfig) -> Path:
    """The stats of the newest preparation, the file DVC tracks as a metric."""
    return Path(config.data.processed_dir).parent / "metrics" / f"{config.name}_data_stats.json"


def data_version(config: RunConfig) -> str:
    """The raw data version of every source; a held-out file inside the same DVC folder adds nothing."""
    data, replay = config.data, config.data.replay
    sources = [(data.validation_path, data.hub_revision), (data.test_path, data.hub_revision)]
    if replay:
        sources.append((replay.path, replay.hub_revision))
    versions = [raw_data_version(data.path, data.hub_revision)]
    for path, revision in sources:
        version = raw_data_version(path, revision) if path else None  # once: a hub revision is a network call
        if version and version not in versions:
            versions.append(version)
    return "+".join(versions)


def run_prepare(config: RunConfig) -> DataRef:
    """Prepared splits addressed by their inputs' fingerprint: two runs with different data settings never share
    (or replace) each other's test items; equal settings reuse one folder."""
    tokenizer = load_tokenizer(config.model)
    fingerprint = input_fingerprint(config, tokenizer)
    out_dir = processed_root(config) / fingerprint
    reused = is_up_to_date(out_dir, fingerprint) and (out_dir / "stats.json").is_file()
    if reused:
        stats = json.loads((out_dir / "stats.json").read_text())
    else:
        stats = prepare_dataset(config, tokenizer, out_dir, stats_path(config), replace=out_dir.exists())
    return DataRef(
        processed_dir=str(out_dir),
        fingerprint=fingerprint,
        raw_version=data_version(config),
        stats=stats,
        reused=reused,
    )


def clean_prepared(config: RunConfig, keep_current: bool = True) -> list[Path]:
    """Remove this data set's prepared versions (all but the current config's, unless keep_current is False)
    and any half-written folder a killed preparation left. Returns what was removed."""
    root = processed_root(config)
    keep = input_fingerprint(config, load_tokenizer(config.model)) if keep_current else None
    # Hidden `.<fingerprint>.tmp-*` folders (a killed preparation's) are children too, so they go as well.
    children = sorted(root.iterdir()) if root.is_dir() else []
    removed = [folder for folder in children if folder.is_dir() and folder.name != keep]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


@task(name="prepare-data", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_only_transient)
def prepare_data(config: RunConfig) -> DataRef:
    ref = run_prepare(config)
    logger = get_run_logger()
    logger.info(
        "data %s: %s (raw version %s)", "reused" if ref.reused else "prepared", ref.processed_dir, ref.raw_version
    )
    for warning in ref.stats.get("warnings", []):
        logger.warning("data: %s", warning)
    return ref
