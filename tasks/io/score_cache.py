"""Base-model scores cached on disk, so repeated runs skip re-scoring an unchanged base.

One JSON file per key under `forgetting.cache_dir`. The key hashes everything that changes the scores:
the base model version, each benchmark's data file (md5), its task YAML and metric, the scoring context
length and the lm-eval version. The batch size is deliberately left out: it does not change log-likelihood
scores. A benchmark whose items are drawn (known before scoring) is cached item by item, so a run scores only
the items it reads that no run scored before; any other benchmark is cached whole, with its item limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from tasks.lib.core.hashing import file_md5
from tasks.lib.core.publish import publish_text
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.general_benchmarks.benchmark_looks import block_plan, subset_row
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan

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


def _item_store(path: Path, key_parts: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's cached per-item results ({"metric", "items", "choices", "groups"}); empty when none match."""
    if not path.is_file():
        return {"items": {}}
    stored = _read(path, key_parts)
    return stored if isinstance(stored, dict) and isinstance(stored.get("items"), dict) else {"items": {}}


def cached_benchmark_rows(
    plans: list[BenchmarkPlan],
    model_version: str,
    max_length: int | None,
    compute: Callable[[list[BenchmarkPlan]], dict[str, BenchmarkScores]],
    cache_dir: Path | str = DEFAULT_CACHE_DIR,
) -> tuple[dict[str, BenchmarkScores], bool]:
    """Each plan's results (`extract_scores`' rows), from the cache where it holds them; the rest scored in one
    `compute(plans)` call (a drawn plan narrowed to its missing items) and cached. Returns (rows, nothing scored)."""
    cache_dir = Path(cache_dir)
    whole, per_item, missing = {}, {}, []
    for plan in plans:
        if plan.drawn is None:
            key_parts = benchmark_key_parts(model_version, [plan], max_length)
            path = cache_dir / f"{cache_key(key_parts)}.json"
            stored = _read(path, key_parts) if path.is_file() else None
            row = BenchmarkScores.model_validate(stored) if stored is not None else None
            whole[plan.name] = (path, key_parts, row)
            if row is None:
                missing.append(plan)
            continue
        every_item = plan.model_copy(update={"limit": None, "drawn": None})  # one store for any draw of the items
        key_parts = benchmark_key_parts(model_version, [every_item], max_length)
        path = cache_dir / f"items-{cache_key(key_parts)}.json"
        per_item[plan.name] = (path, key_parts)
        keys = [str(index) for index in plan.drawn]
        known = _item_store(path, key_parts)["items"]
        unscored = [key for key in keys if key not in known]
        if unscored:
            missing.append(block_plan(plan, unscored))
    computed = compute(missing) if missing else {}
    rows: dict[str, BenchmarkScores] = {}
    for plan in plans:
        if plan.name in whole:
            path, key_parts, row = whole[plan.name]
            if row is None:
                row = computed[plan.name]
                payload = {"key_parts": key_parts, "scores": row.model_dump(), "created": datetime.now(UTC).isoformat()}
                publish_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
            rows[plan.name] = row
            continue
        path, key_parts = per_item[plan.name]
        with FileLock(f"{path}.lock", timeout=600):  # two runs adding items to one benchmark's results
            store = _item_store(path, key_parts)
            new = computed.get(plan.name)
            if new is not None:
                for field, added in (("items", new.items), ("choices", new.choices), ("groups", new.groups)):
                    store[field] = {**(store.get(field) or {}), **(added or {})} or None
                store["metric"] = new.metric
                payload = {"key_parts": key_parts, "scores": store, "created": datetime.now(UTC).isoformat()}
                publish_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
        rows[plan.name] = subset_row(BenchmarkScores.model_validate(store), [str(index) for index in plan.drawn or []])
    return rows, not missing
