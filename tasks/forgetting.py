"""Prefect task: general benchmarks for base (cached) and tuned, and the gate that guards promotion."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_logger, step_run
from tasks.io.models import load_scored_model, load_tokenizer, scoring_identity
from tasks.io.ray_cluster import ray_connection, score_on_ray
from tasks.io.score_cache import cached_benchmark_rows
from tasks.lib.config import RunConfig
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.gate.decision import decide
from tasks.lib.gate.gate_report import forgetting_delta_chart, forgetting_markdown
from tasks.lib.gate.gate_result import GateResult
from tasks.lib.gate.sequential import Looks
from tasks.lib.general_benchmarks.benchmark_looks import block_size, look_order, merge_block, score_in_looks
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan, configured_plans, score_benchmarks
from tasks.lib.run.refs import ForgettingRef, MergeRef, RunContext, TaskEvalRef

Scores = dict[str, BenchmarkScores]  # benchmark name -> its results


def base_model_version(config: RunConfig) -> str:
    """What the base benchmark scores depend on: the base as the adapter is merged into it (merge.strategy: the
    dequantized 4-bit base, or the original) and the scorer."""
    identity = {
        **scoring_identity(config),
        "scored_as": f"dense merge base ({config.merge.strategy})",
        "scorer": "lm-eval requests in packed rows, each context once (SharedContextLM)",
    }
    return json.dumps(identity, sort_keys=True)


def gate_looks(config: RunConfig) -> dict[str, Looks] | None:
    """The group-sequential gate's looks per benchmark scored in blocks; None for the fixed design."""
    bench = config.forgetting
    if bench.look_every is None:
        return None
    looks = {}
    for plan in configured_plans(config):
        every = block_size(plan, bench.look_every, bench.perplexity_look_every)
        if every is not None:
            looks[plan.name] = Looks(tuple(look_order(plan, bench.sample_seed)), every)
    return looks


def scorer(config: RunConfig, model_dir: str | None) -> Callable[[list[BenchmarkPlan]], dict]:
    """Scores plans with the merged model in `model_dir` (None: the base): split over Ray workers, or here with the
    model loaded on the first call and kept."""
    if config.forgetting.engine == "ray":
        return lambda plans: score_on_ray(config, model_dir, plans)
    loaded = functools.cache(lambda: (load_scored_model(config, model_dir), load_tokenizer(config.model)))
    return lambda plans: score_benchmarks(config, *loaded(), plans=plans)


class BaseScores:
    """The base's benchmark results on the items asked for: from the base-score cache, the rest scored (the base
    loaded once, on the first item the cache lacks) and cached."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.all_cached = True
        self._score = scorer(config, None)

    def rows(self, plans: list[BenchmarkPlan]) -> Scores:
        bench = self.config.forgetting
        rows, cached = cached_benchmark_rows(
            plans, base_model_version(self.config), bench.max_length, self._score, bench.cache_dir
        )
        self.all_cached &= cached
        return rows

    def release(self) -> None:
        self._score = scorer(self.config, None)  # drops the loaded base


class LookProgress:
    """Says, as each look of the group-sequential gate starts, which look it is, what it scores and how long the
    looks left may take at most (the mean look so far times the looks left: a row that decides stops earlier).
    `say`: where the line goes (default: the step's logger, which the Prefect UI shows)."""

    def __init__(self, max_looks: int, say: Callable[[str], None] | None = None) -> None:
        self.max_looks, self.look, self.start = max_looks, 0, time.monotonic()
        self.say = say or (lambda line: step_logger().info("%s", line))

    def started(self, plans: list[BenchmarkPlan]) -> None:
        elapsed = time.monotonic() - self.start
        left = elapsed / self.look * (self.max_looks - self.look) if self.look else None
        self.look += 1
        blocks = ", ".join(f"{plan.name} {len(plan.drawn) if plan.drawn else plan.limit or 'all'}" for plan in plans)
        remaining = "" if left is None else f", at most ~{left:.0f} s left"
        self.say(
            f"forgetting: look {self.look} of at most {self.max_looks}, base and merged model on {blocks} items; "
            f"{elapsed:.0f} s so far{remaining}"
        )


def score_base_and_tuned(
    config: RunConfig,
    merged_dir: str,
    decide_now: Callable[[Scores, Scores], GateResult],
    looks: dict[str, Looks] | None,
) -> tuple[Scores, Scores, bool]:
    """(base results, merged model results, every base result cached) on the items the gate reads. Group-sequential:
    both scored a block of items at a time until the gate decides each row, so neither pays for items no look reads;
    otherwise every item. Here, or each block split over Ray workers (one connection for the whole check)."""
    if config.forgetting.engine == "ray":
        with ray_connection(config.ray.address):
            return _base_and_tuned(config, decide_now, looks, scorer(config, merged_dir))
    return _base_and_tuned(config, decide_now, looks, scorer(config, merged_dir))


def _base_and_tuned(
    config: RunConfig,
    decide_now: Callable[[Scores, Scores], GateResult],
    looks: dict[str, Looks] | None,
    score_tuned: Callable[[list[BenchmarkPlan]], dict],
) -> tuple[Scores, Scores, bool]:
    plans, base = configured_plans(config), BaseScores(config)
    if not looks:
        base_rows = base.rows(plans)
        base.release()
        return base_rows, score_tuned(plans), base.all_cached
    base_rows: Scores = {}
    progress = LookProgress(max(len(row.counts) for row in looks.values()))

    def score_look(block_plans: list[BenchmarkPlan]) -> Scores:
        progress.started(block_plans)
        for name, row in base.rows(block_plans).items():
            base_rows[name] = merge_block(base_rows.get(name), row) if name in looks else row
        return score_tuned(block_plans)

    def still_open(tuned: Scores) -> set[str]:
        rows = decide_now(base_rows, tuned).rows
        return {row.name for row in rows if row.looks and row.verdict not in ("pass", "fail")}

    tuned_rows = score_in_looks(plans, looks, score_look, still_open)
    return base_rows, tuned_rows, base.all_cached


def score_base_model(config: RunConfig) -> tuple[Scores, bool]:
    """Fill the base-score cache with every configured item (the `qlora score-base` verb): a later run then loads
    only the merged model. Returns (scores, was cached)."""
    base = BaseScores(config)
    return base.rows(configured_plans(config)), base.all_cached


def run_forgetting_check(
    config: RunConfig, context: RunContext, merge: MergeRef | None, evaluation: TaskEvalRef
) -> ForgettingRef:
    bench = config.forgetting
    with step_run(config, context, "forgetting") as tracker:
        base_scores: Scores = {}
        tuned_scores: Scores = {}
        cached = False
        note = ""
        margins = {name: setting.margin for name, setting in bench.settings.items() if setting.margin is not None}
        looks: dict[str, Looks] | None = None

        def decide_now(base: Scores, tuned: Scores) -> GateResult:
            return decide(base, tuned, config.gate, evaluation.task, margins, looks if base else None)

        if not (bench.enabled and bench.benchmarks):
            note = "Forgetting benchmarks disabled (forgetting.enabled / forgetting.benchmarks)."
        elif merge is None:
            note = (
                "Forgetting benchmarks not run: the target-task row already failed, so nothing can be promoted "
                "(set forgetting.run_when_task_fails for the full report)."
            )
        else:
            looks = gate_looks(config)
            base_scores, tuned_scores, cached = score_base_and_tuned(config, merge.merged_dir, decide_now, looks)
        gate = decide_now(base_scores, tuned_scores)
        gate.note = note
        for side, scores in (("base", base_scores), ("tuned", tuned_scores)):
            tracker.log_metrics(
                {
                    f"{side}.{name}.{key}": value
                    for name, row in scores.items()
                    for key, value in {**row.values, "n": row.n}.items()
                }
            )
        tracker.log_metrics(gate.metrics())
        tracker.log_metrics({"base_scores_cached": float(cached)})
        tracker.set_tags(gate.tags())
        markdown = forgetting_markdown(gate, {"base": evaluation.base, "tuned": evaluation.tuned})
        run_dir = Path(context.run_dir)
        RunLayout.of(run_dir).forgetting_report.write_text(markdown)
        RunLayout.of(run_dir).gate_file.write_text(gate.model_dump_json(indent=2))
        tracker.log_artifact(RunLayout.of(run_dir).forgetting_report, "forgetting")
        tracker.log_artifact(RunLayout.of(run_dir).gate_file, "forgetting")
        tracker.log_artifact(forgetting_delta_chart(gate, RunLayout.of(run_dir).forgetting_chart), "forgetting")
        return ForgettingRef(
            gate=gate,
            markdown=markdown,
            base_scores_cached=cached,
            mlflow_run_id=tracker.run_id,
        )


@task(name="check-forgetting", retries=1, retry_condition_fn=retry_only_transient)
def check_forgetting(
    config: RunConfig, context: RunContext, merge: MergeRef | None, evaluation: TaskEvalRef
) -> ForgettingRef:
    """Scores the merged model (what ships) against its base. A failed gate is a result, not an error: the
    flow reads `passed` and does not promote."""
    ref = once(
        "forgetting",
        ForgettingRef,
        context,
        lambda: run_forgetting_check(config, context, merge, evaluation),
        get_run_logger(),
    )
    get_run_logger().info(
        "forgetting gate %s (base scores %s)",
        "PASSED" if ref.passed else "FAILED",
        "from cache" if ref.base_scores_cached else "computed",
    )
    return ref
