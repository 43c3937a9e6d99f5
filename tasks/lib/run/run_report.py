"""The pipeline run's markdown report (a Prefect artifact) and the registered model's card.

`tracking` is the tracking URI as it may be shown: already scrubbed of credentials by the caller.
"""

from __future__ import annotations

from tasks.lib.config import RunConfig
from tasks.lib.modeling.merge_check import MergeCheck
from tasks.lib.run.refs import PipelineResult


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def merge_summary(strategy: str, check: MergeCheck) -> str:
    ratio = check.relative_distance
    ratio_text = "n/a: the adapter moves nothing measurable" if ratio is None else f"{ratio:.3g}"
    return (
        f"Strategy `{strategy}`, {check.dtype} weights, on {check.n_answer_tokens} answer tokens of "
        f"{check.n_prompts} test items: answer log-probabilities within {check.merged_vs_adapter_max:.3g} of "
        f"the adapter model (bound {check.max_logprob_diff}); mean distance {check.merged_vs_adapter_mean:.3g} "
        f"against the base's {check.base_vs_adapter_mean:.3g} (ratio {ratio_text}); argmax agreement "
        f"{check.argmax_agreement:.4f}."
    )


def pipeline_markdown(config: RunConfig, result: PipelineResult, tracking: str) -> str:
    lines = [f"# QLoRA pipeline `{config.name}`, run `{result.run_id}`", ""]
    if result.data is not None:
        stats = result.data.stats
        lines += [
            f"- data version (DVC md5): `{result.data.raw_version}`, "
            f"prepared `{config.shown_path(result.data.processed_dir)}` "
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
    lines += [
        "",
        f"MLflow parent run `{result.mlflow_run_id}` in experiment `{config.tracking.experiment}` ({tracking}).",
    ]
    return "\n".join(lines)


def serving_commands(model_name: str, tracking: str, port: int = 5001) -> str:
    """How to serve and query a registered version, from a fresh clone (the README's serving section)."""
    return "\n".join(
        [
            "```bash",
            f"MLFLOW_TRACKING_URI={tracking} PATH=$PWD/.venv/bin:$PATH \\",
            f"  mlflow models serve -m 'models:/{model_name}@champion' --env-manager local -h 127.0.0.1 -p {port}",
            f"curl -s http://127.0.0.1:{port}/invocations -H 'Content-Type: application/json' \\",
            '  -d \'{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}\'',
            "```",
            "",
            "Requests are OpenAI-style chat (`messages`; `max_tokens`, default 256; `temperature`, default 0: greedy, "
            "the evaluation's decoding; `top_p`) and answers are chat completions (`choices[0].message.content`). "
            "The chat template the model was trained with is applied. The version's `artifacts/merged` folder is a "
            "plain transformers folder (safetensors, tokenizer, chat template, this card): "
            "`mlflow artifacts download -u models:/NAME/VERSION` then `vllm serve <folder>/artifacts/merged` "
            "or TGI's `--model-id <folder>/artifacts/merged`.",
        ]
    )


def verdict_line(result: PipelineResult) -> str:
    """One line for the pipeline run's description in MLflow: what it registered, and why."""
    parts = []
    registration = result.registration
    if registration is not None and registration.registered:
        aliases = ", ".join(registration.aliases)
        parts.append(f"registered {registration.model_name} v{registration.version} ({aliases})")
    elif registration is not None:
        parts.append(f"not registered: {registration.reason}")
    else:
        parts.append("not registered (the run stopped before registration)")
    if result.evaluation is not None:
        task = result.evaluation.task
        parts.append(f"task {task.metric} {task.verdict}: {task.reason}")
    if result.forgetting is not None:
        gate = result.forgetting.gate
        parts.append(f"forgetting gate {gate.verdict} ({', '.join(f'{r.name} {r.verdict}' for r in gate.rows)})")
    return "; ".join(parts)


def registered_model_description(config: RunConfig, tracking: str) -> str:
    """The registered model's own description (each version has its model card): what it is, how a version gets
    there and becomes `champion`, how to serve it."""
    base = config.shown_path(config.model.name_or_path) + (
        f" @ `{config.model.revision}`" if config.model.revision else ""
    )
    registry = config.registry
    return "\n".join(
        [
            f"QLoRA fine-tunes of **{base}** on `{config.name}` (data `{config.shown_path(config.data.path)}`), "
            "each merged into the dequantized 4-bit base it was trained on.",
            "",
            "**How a version gets here.** Only a pipeline run whose gates passed is registered: the tuned model shown "
            "better than the base on the task's test items, and not worse beyond the margins on the forgetting "
            f"benchmarks ({', '.join(config.forgetting.benchmarks)}), by paired per-item tests at alpha "
            f"{config.gate.alpha:g}; the merged model checked to reproduce the adapter model and loaded back from the "
            "registry bit for bit before any alias moves. Each version's description is its model card.",
            "",
            "**Aliases.** `challenger`: the newest registered version. `champion`: the version to serve; it moves "
            "only when a challenger is shown better on the same test items (exact McNemar, or a betting test for "
            f"graded scores), each of the {registry.confirmation_horizon} confirmations a test set allows tested at "
            f"{config.gate.alpha:g}/{registry.confirmation_horizon}; the version tags say which look it was and the "
            "gain its items could confirm.",
            "",
            "**Serve the champion.**",
            "",
            serving_commands(registry.model_name, tracking),
        ]
    )


def model_card_markdown(
    config: RunConfig, result: PipelineResult, provenance: dict[str, str], tracking: str, promotion: str = ""
) -> str:
    """The registered version's description and the README.md beside its weights."""
    model, lora, train = config.model, config.lora, config.train
    evaluation, forgetting, merge = result.evaluation, result.forgetting, result.merge
    title = f"# `{config.registry.model_name}`"
    base = config.shown_path(model.name_or_path) + (f" @ `{model.revision}`" if model.revision else "")
    quantized = f"4-bit {config.quantization.quant_type}" if config.quantization.enabled else "not quantized"
    lines = [
        title,
        "",
        f"A QLoRA fine-tune of **{base}** on `{config.name}`, merged into the dequantized 4-bit base and "
        f"registered by pipeline run `{result.run_id}` only after its gates passed.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base}" + (f" (GGUF `{model.gguf_file}`)" if model.gguf_file else "") + " |",
        f"| data version (DVC md5) | `{provenance.get('data_version', '')}` |",
        f"| adapter | LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, "
        f"targets {lora.target_modules}; base {quantized} |",
        f"| training | {train.max_steps} max steps, learning rate {train.learning_rate:g}, batch {train.batch_size}, "
        f"seed {config.seed} |",
        f"| code and config | commit `{provenance.get('git_commit', '')}`, config hash "
        f"`{provenance.get('config_hash', '')}` |",
        f"| MLflow run | `{result.mlflow_run_id}` |",
    ]
    if promotion:
        lines.append(f"| against the champion | {promotion} |")
    if evaluation is not None:
        metric = evaluation.primary_metric
        lines += [
            "",
            "## Target task",
            "",
            f"{metric}: base {evaluation.base.get(metric, float('nan')):.3f} -> tuned "
            f"{evaluation.tuned.get(metric, float('nan')):.3f} on the same {evaluation.n_items} test items.",
            "",
            evaluation.markdown,
        ]
    if forgetting is not None:
        lines += ["", forgetting.markdown.replace("## Catastrophic-forgetting check", "## Forgetting gate", 1)]
    if merge is not None:
        lines += ["", "## Merge check", "", merge_summary(merge.strategy, merge.fidelity)]
    lines += ["", "## Serving", "", serving_commands(config.registry.model_name, tracking), ""]
    return "\n".join(lines)
