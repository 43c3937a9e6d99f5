"""Prefect task: decide promotion on the same test items as the champion, register, verify, then move aliases."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from tasks.common import once, retry_only_transient, step_run
from tasks.io.locks import registry_lock
from tasks.io.registry import (
    PIPELINE_RUN_TAG,
    champion,
    load_registered,
    read_confirmation_ledger,
    record_test_look,
    register_merged_model,
    verify_round_trip,
)
from tasks.io.tracking import scrub_mapping, shown_tracking_uri
from tasks.io.versioning import provenance
from tasks.lib.config import RunConfig
from tasks.lib.core.publish import publish_text
from tasks.lib.evaluation.task_eval import evaluate_task, load_split
from tasks.lib.gate.promotion import decide_promotion, decode_correct, decode_scores, encode_correct, encode_scores
from tasks.lib.gate.stats import is_binary
from tasks.lib.run.refs import DataRef, PipelineResult, RegistrationRef, RunContext, TaskEvalRef
from tasks.lib.run.run_report import model_card_markdown, registered_model_description

TEST_FINGERPRINT_TAG = "test_fingerprint"
TEST_CORRECT_TAG = "test_items_correct"
TEST_SCORES_TAG = "test_item_scores"
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value; larger test sets are re-scored instead


def champion_scores_on(
    config: RunConfig, evaluation: TaskEvalRef, rows: list[dict], logger=None
) -> tuple[list[float] | None, str]:
    """The champion's per-item results (right/wrong, or graded scores) on this run's test items, and their source.

    Reused from the champion's tags when it was scored on the same items; otherwise the champion
    (`models:/<name>@champion`) is loaded and scored on them now.
    """
    current = champion(config.registry.model_name)
    if current is None:
        return None, "no champion"
    version, tags = current
    if tags.get(TEST_FINGERPRINT_TAG) == evaluation.test_fingerprint:
        stored = f"v{version}'s stored results on the same items"
        if TEST_SCORES_TAG in tags:
            return decode_scores(tags[TEST_SCORES_TAG]), stored
        if TEST_CORRECT_TAG in tags:
            return [float(correct) for correct in decode_correct(tags[TEST_CORRECT_TAG])], stored
    if logger:
        logger.info("champion v%s was scored on other test items: scoring it on this run's items", version)
    model, tokenizer = load_registered(f"models:/{config.registry.model_name}/{version}")
    scored = evaluate_task(model, tokenizer, rows, config.evaluation)
    by_id = {record.id: record.score for record in scored.predictions}
    return [by_id[item] for item in evaluation.item_ids], f"v{version} re-scored on this run's items"


def run_registration(config: RunConfig, context: RunContext, data: DataRef, result: PipelineResult) -> RegistrationRef:
    name = config.registry.model_name
    if not config.registry.enabled:
        return RegistrationRef(registered=False, model_name=name, version=None, aliases=[], reason="registry disabled")
    if result.forgetting is None or not result.forgetting.passed or result.merge is None:
        return RegistrationRef(
            registered=False, model_name=name, version=None, aliases=[], reason="a gate failed: nothing registered"
        )
    evaluation = result.evaluation
    logger = get_run_logger_or_none()
    holder = f"pipeline run {context.run_id} ({config.name})"
    with (
        step_run(config, context, "register") as tracker,
        registry_lock(name, holder=holder, note=logger.info if logger else print),
    ):
        # Under the lock: the champion is read, compared and replaced by one run at a time.
        rows = load_split(Path(data.processed_dir), "test")
        champion_items, source = champion_scores_on(config, evaluation, rows, logger)
        _, challenger_items = evaluation.paired_scores()
        # Each confirmation on these test items spends part of their error budget (tasks/lib/gate/promotion.py).
        ledger = read_confirmation_ledger(name, evaluation.test_fingerprint).opened(
            config.registry.confirmation_horizon, config.registry.horizon_renewals
        )
        look = ledger.look_of(context.run_id, config.gate.alpha)
        decision = decide_promotion(True, challenger_items, champion_items, look)
        if champion_items is not None and logger:
            log = logger.info if look.within_horizon else logger.warning
            log("promotion (%s): %s", look.describe(), decision.reason)

        provenance_tags = provenance(config, data)
        tracking = shown_tracking_uri(config.tracking.uri)
        card = model_card_markdown(config, result, provenance_tags, tracking, promotion=decision.reason)
        publish_text(Path(result.merge.merged_dir) / "README.md", card)  # beside the weights, as on the HF hub
        tags = version_tags(config, context, result, provenance_tags, source)
        if champion_items is not None:
            ledger = ledger.with_look(context.run_id)
            spent = {
                "look": look.number,
                "horizon": look.horizon,
                "level": look.level,
                "within_horizon": look.within_horizon,
                "renewals": ledger.renewals,
                "test_set": ledger.fingerprint,
            }
            tags["test_ledger"] = json.dumps(spent)
        binary = is_binary(challenger_items)
        stored = encode_correct(challenger_items) if binary else encode_scores(challenger_items)
        if len(stored) <= MAX_TAG_CHARS:
            tags[TEST_CORRECT_TAG if binary else TEST_SCORES_TAG] = stored
        # Everything the trimmed tags leave out, beside the card, in the step run.
        details = {**provenance_tags, **result.forgetting.gate.tags(), **tags, "promotion_reason": decision.reason}
        details_json = json.dumps(scrub_mapping(details), indent=2, sort_keys=True)
        tracker.log_text(details_json, "registration/version_details.json")
        tracker.log_text(card, "registration/model_card.md")
        registered = register_merged_model(
            Path(result.merge.merged_dir),
            name,
            context.parent_run_id,  # the pipeline's run lists the logged model and the version it became
            tags,
            decision,
            verify=lambda uri: verify_round_trip(uri, Path(result.merge.merged_dir)),
            description=card,
            example_prompt=user_prompt(rows[0]) if rows else "Hello!",
            model_description=registered_model_description(config, tracking),
            model_tags={
                "base_model": tags["base_model"],
                "task": config.name,
                "task.metric": tags["task.metric"],
                "confirmation_horizon": str(config.registry.confirmation_horizon),
            },
        )
        if champion_items is not None:
            record_test_look(name, ledger)
        round_trip = registered.round_trip.model_dump() if registered.round_trip else None
        if round_trip:
            tracker.log_metrics({f"round_trip.{key}": value for key, value in round_trip.items()})
        tracker.set_tags({"promotion_reason": decision.reason, "registered_version": str(registered.version)})
        return RegistrationRef(
            registered=registered.version is not None,
            model_name=name,
            version=str(registered.version) if registered.version is not None else None,
            aliases=registered.aliases,
            reason=registered.reason,
            round_trip=round_trip,
        )


def version_tags(
    config: RunConfig, context: RunContext, result: PipelineResult, provenance_tags: dict[str, str], source: str
) -> dict[str, str]:
    """What a user filters or sorts versions on; the rest is in the card and `registration/version_details.json`."""
    evaluation, metric = result.evaluation, result.evaluation.primary_metric
    return {
        **{key: provenance_tags[key] for key in ("data_version", "config_hash", "git_commit")},
        "base_model": config.shown_path(config.model.name_or_path)
        + (f"@{config.model.revision}" if config.model.revision else ""),
        PIPELINE_RUN_TAG: context.run_id,
        "adapter_model_id": result.train.adapter_model_id,
        "gate.verdict": result.forgetting.gate.verdict,
        # One word per benchmark row, to filter versions by (the reasons are in the card).
        **{f"gate.{row.name}": row.verdict for row in result.forgetting.gate.rows},
        "task.metric": metric,
        "task.base": f"{evaluation.base.get(metric, float('nan')):.4f}",
        "task.tuned": f"{evaluation.tuned.get(metric, float('nan')):.4f}",
        "champion_comparison": source,
        TEST_FINGERPRINT_TAG: evaluation.test_fingerprint,
    }


def user_prompt(row: dict) -> str:
    """The last user turn of a test row: the served model's input example."""
    return next((m["content"] for m in reversed(row["messages"]) if m.get("role") == "user"), "Hello!")


def get_run_logger_or_none():
    try:
        return get_run_logger()
    except MissingContextError:  # outside a Prefect run (tests, scripts)
        return None


@task(name="register-model", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_only_transient)
def register_model(config: RunConfig, context: RunContext, data: DataRef, result: PipelineResult) -> RegistrationRef:
    ref = once(
        "register", RegistrationRef, context, lambda: run_registration(config, context, data, result), get_run_logger()
    )
    get_run_logger().info(
        "registry: %s", f"{ref.model_name} v{ref.version} {ref.aliases}" if ref.registered else ref.reason
    )
    return ref
