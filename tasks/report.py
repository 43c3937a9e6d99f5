"""The pipeline run's markdown report, published as a Prefect artifact."""

from __future__ import annotations

from tasks.io.tracking import scrub, tracking_uri
from tasks.lib.config import RunConfig
from tasks.lib.refs import PipelineResult


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def merge_summary(strategy: str, check: dict) -> str:
    ratio = check["relative_distance"]
    ratio_text = "n/a: the adapter moves nothing measurable" if ratio is None else f"{ratio:.3g}"
    return (
        f"Strategy `{strategy}`, {check['dtype']} weights, on {check['n_answer_tokens']} answer tokens of "
        f"{check['n_prompts']} test items: answer log-probabilities within {check['merged_vs_adapter_max']:.3g} of "
        f"the adapter model (bound {check['max_logprob_diff']}); mean distance {check['merged_vs_adapter_mean']:.3g} "
        f"against the base's {check['base_vs_adapter_mean']:.3g} (ratio {ratio_text}); argmax agreement "
        f"{check['argmax_agreement']:.4f}."
    )


def pipeline_markdown(config: RunConfig, result: PipelineResult) -> str:
    lines = [f"# QLoRA pipeline `{config.name}`, run `{result.run_id}`", ""]
    if result.data is not None:
        stats = result.data.stats
        lines += [
            f"- data version (DVC md5): `{result.data.raw_version}`, prepared `{result.data.processed_dir}` "
            f"({'reused' if result.data.reused else 'prepared now'})",
            f"- rows: {stats.get('rows_per_split', stats.get('rows', ''))}",
        ]
    if result.train is not None:
        train = result.train
        lines += [
            f"- training: {train.global_step} steps"
            + (f" (resumed from step {train.resumed_from_step})" if train.resumed_from_step else "")
            + f", validation loss {_fmt(train.first_eval_loss)} -> {_fmt(train.best_eval_loss)}, "
            f"{train.trainable_params:,} trainable parameters, {train.tokens_per_second:.0f} tokens/s",
        ]
    lines.append("")
    if result.evaluation is not None:
        lines += ["## Target task", "", result.evaluation.markdown, ""]
    if result.forgetting is not None:
        lines += [result.forgetting.markdown, ""]
    if result.merge is not None:
        lines += ["## Merge", "", merge_summary(result.merge.strategy, result.merge.fidelity), ""]
    lines += ["## Registry", ""]
    registration = result.registration
    if registration is not None and registration.registered:
        lines.append(
            f"Registered `{registration.model_name}` version **{registration.version}** "
            f"with aliases {', '.join(f'`{alias}`' for alias in registration.aliases)} ({registration.reason})."
        )
    else:
        lines.append(f"Nothing registered: {registration.reason if registration else 'the run did not finish'}.")
    tracking = scrub(tracking_uri(config.tracking.uri))
    lines += [
        "",
        f"MLflow parent run `{result.mlflow_run_id}` in experiment `{config.tracking.experiment}` ({tracking}).",
    ]
    return "\n".join(lines)
