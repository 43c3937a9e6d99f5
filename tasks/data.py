"""Prefect task: prepare the data set (skipped when the prepared copy matches its inputs)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import retry_only_transient
from tasks.io.models import load_tokenizer
from tasks.io.versioning import raw_data_version
from tasks.lib.config import RunConfig
from tasks.lib.prepare import input_fingerprint, is_up_to_date, prepare_dataset
from tasks.lib.refs import DataRef


def processed_paths(config: RunConfig) -> tuple[Path, Path]:
    """The prepared splits' folder and the stats file DVC tracks as a metric."""
    root = Path(config.data.processed_dir)
    return root / config.name, root.parent / "metrics" / f"{config.name}_data_stats.json"


def data_version(config: RunConfig) -> str:
    """The raw data version of every source; a held-out file inside the same DVC folder adds nothing."""
    versions = [raw_data_version(config.data.path)]
    replay = config.data.replay.path if config.data.replay else None
    for path in (config.data.validation_path, config.data.test_path, replay):
        if path and raw_data_version(path) not in versions:
            versions.append(raw_data_version(path))
    return "+".join(versions)


def run_prepare(config: RunConfig) -> DataRef:
    out_dir, stats_path = processed_paths(config)
    tokenizer = load_tokenizer(config.model)
    fingerprint = input_fingerprint(config, tokenizer)
    reused = is_up_to_date(out_dir, fingerprint) and stats_path.is_file()
    if reused:
        stats = json.loads(stats_path.read_text())
    else:
        stats = prepare_dataset(config, tokenizer, out_dir, stats_path)
    return DataRef(
        processed_dir=str(out_dir),
        fingerprint=fingerprint,
        raw_version=data_version(config),
        stats=stats,
        reused=reused,
    )


@task(name="prepare-data", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_only_transient)
def prepare_data(config: RunConfig) -> DataRef:
    ref = run_prepare(config)
    get_run_logger().info(
        "data %s: %s (raw version %s)", "reused" if ref.reused else "prepared", ref.processed_dir, ref.raw_version
    )
    return ref
