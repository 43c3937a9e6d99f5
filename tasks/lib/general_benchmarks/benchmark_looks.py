"""A benchmark read in looks: the order its items are read in, the block each look adds, and the per-item rows
joined block by block."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.gate.sequential import Looks
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan, chance_level

if TYPE_CHECKING:
    pass

# Benchmarks scored as perplexity over whole documents in windows of `max_length` tokens.


def block_size(plan: BenchmarkPlan, items_per_look: int | None, documents_per_look: int | None) -> int | None:
    """How many items (documents, for perplexity) a look of the group-sequential gate adds for this benchmark; None:
    it is scored whole. Only items drawn at random are scored in blocks (a block of them is a random sample too)."""
    if plan.drawn is None:
        return None
    return documents_per_look if plan.rolling else items_per_look


def look_order(plan: BenchmarkPlan, seed: int) -> list[str]:
    """The plan's item keys (lm-eval's doc ids: indices in the benchmark file) in a seeded random order: the
    group-sequential gate reads them a block at a time, so every block is a random sample of the items."""
    rng = np.random.default_rng([seed, zlib.crc32(plan.name.encode()), 1])
    return [str(index) for index in rng.permutation(plan.drawn or [])]


def block_plan(plan: BenchmarkPlan, keys: list[str]) -> BenchmarkPlan:
    """The plan restricted to the items of `keys` (lm-eval takes drawn indices in file order)."""
    return plan.model_copy(update={"drawn": sorted(int(key) for key in keys), "limit": len(keys)})


def items_row(
    metric: str | None,
    items: Mapping[str, Any],
    choices: Mapping[str, int] | None = None,
    groups: Mapping[str, str] | None = None,
) -> BenchmarkScores:
    """A benchmark's results on exactly these items: the judged metric recomputed over them (lm-eval's other
    aggregates, and its stderr, belong to the items it scored and are not carried)."""
    values = list(items.values())
    if values and isinstance(values[0], list | tuple):  # [log-likelihood, words or bytes] per document
        log_likelihood, weight = sum(value[0] for value in values), sum(value[1] for value in values)
        per_unit = -log_likelihood / weight
        headline = per_unit / math.log(2) if metric == "bits_per_byte" else math.exp(per_unit)
    else:
        headline = float(np.mean([float(value) for value in values]))
    return BenchmarkScores(
        metric=metric,
        values={metric: headline} if metric else {},
        n=float(len(items)),
        items=dict(sorted(items.items(), key=lambda item: int(item[0]))),
        choices=dict(choices) if choices else None,
        chance=chance_level(choices),
        groups=dict(groups) if groups else None,
    )


def merge_block(scores: BenchmarkScores | None, block: BenchmarkScores) -> BenchmarkScores:
    """Add one block's results to a benchmark's results so far (`items_row` over every item so far)."""
    merged = scores or BenchmarkScores()
    return items_row(
        block.metric,
        {**merged.items, **block.items},
        {**(merged.choices or {}), **(block.choices or {})},
        {**(merged.groups or {}), **(block.groups or {})},
    )


def subset_row(row: BenchmarkScores, keys: Iterable[str]) -> BenchmarkScores:
    """A benchmark's results restricted to the items of `keys` that it holds."""
    keys = list(keys)

    def pick(mapping: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return {key: mapping[key] for key in keys if key in mapping} if mapping else None

    return items_row(row.metric, pick(row.items) or {}, pick(row.choices), pick(row.groups))


def score_in_looks(
    plans: list[BenchmarkPlan],
    looks: Mapping[str, Looks],
    score: Callable[[list[BenchmarkPlan]], dict[str, BenchmarkScores]],
    still_open: Callable[[dict[str, BenchmarkScores]], set[str]],
) -> dict[str, BenchmarkScores]:
    """Group-sequential scoring: the first look scores the first block of each benchmark in `looks` (and every other
    benchmark whole); each later look scores the next block of the benchmarks `still_open(scores so far)` names,
    until none is open or their items run out. `score(plans)` returns `extract_scores`' rows."""
    by_name = {plan.name: plan for plan in plans}
    first = [
        block_plan(plan, list(looks[plan.name].order[: looks[plan.name].every])) if plan.name in looks else plan
        for plan in plans
    ]
    scores: dict[str, BenchmarkScores] = {}
    for name, result in score(first).items():
        scores[name] = merge_block(None, result) if name in looks else result
    look = 1
    while True:
        undecided = still_open(scores)
        blocks = {
            name: list(row.order[look * row.every : (look + 1) * row.every])
            for name, row in looks.items()
            if name in undecided and look * row.every < len(row.order)
        }
        if not blocks:
            return {plan.name: scores[plan.name] for plan in plans}
        results = score([block_plan(by_name[name], keys) for name, keys in blocks.items()])
        for name in blocks:
            scores[name] = merge_block(scores[name], results[name])
        look += 1
