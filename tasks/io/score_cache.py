"""Base-model benchmark scores cached on disk, so repeated runs skip re-scoring an unchanged base.

One JSON file per key under `forgetting.cache_dir`. The key hashes everything that changes the scores:
the base model version, each benchmark's data file (md5), its task YAML, item limit and metric, the
scoring context length and the lm-eval version. The batch size is deliberately left out: it does not
change log-likelihood scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.lib.benchmarks import BenchmarkPlan
from tasks.lib.hashing import file_md5
from tasks.lib.publish import publish_text

logger = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path(".cache/base_scores")


def benchmark_key_parts(model_version: str, plans: list[BenchmarkPlan], max_length: int | None = None) -> dict:
    """The cache key inputs for base scores of `plans` (reads and hashes their data files and task YAMLs)."""
    from importlib.metadata import version

    def digest(text: str | None) -> str | None:
        return None if text is None else hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    return {
        "model_version": model_version,
        "max_length": max_length,
        "lm_eval": version("lm_eval"),
        "benchmarks": {
            plan.name: {
                "limit": plan.limit,
                "drawn": digest(json.dumps(plan.drawn)) if plan.drawn is not None else None,
                "metric": plan.metric,
                "kind": plan.custom_kind,
                "data_md5": file_md5(Path(plan.data_file)) if plan.data_file else None,
                "task_yaml_md5": digest(plan.yaml_text),
            }
            for plan in sorted(plans, key=lambda plan: plan.name)
        },
    }


def cache_key(key_parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read(path: Path, key_parts: dict[str, Any]) -> dict | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("ignoring unreadable score cache %s: %s", path, error)
        return None
    if not isinstance(stored, dict) or stored.get("key_parts") != json.loads(json.dumps(key_parts, default=str)):
        logger.warning("ignoring score cache %s: its key does not match", path)
        return None
    return stored.get("scores")


def get_or_compute(
    key_parts: dict[str, Any], compute: Callable[[], dict], cache_dir: Path | str = DEFAULT_CACHE_DIR
) -> tuple[dict, bool]:
    """The cached scores for key_parts, else `compute()` stored under that key; returns (scores, was_cached)."""
    path = Path(cache_dir) / f"{cache_key(key_parts)}.json"
    if path.is_file():
        scores = _read(path, key_parts)
        if scores is not None:
            return scores, True
    scores = compute()
    payload = {"key_parts": key_parts, "scores": scores, "created": datetime.now(UTC).isoformat()}
    publish_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return scores, False
