"""What each `qlora` verb does: one function per verb, taking the verb's arguments by name and returning its exit
code. flows/cli.py maps the command line onto them; what they print comes from flows/summaries.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from flows import summaries
from tasks.lib.config import ConfigError, RunConfig, load_config
from tasks.lib.core.errors import ExitCode


def load_checked(config: str, overrides: list[str], inputs: Literal["all", "data", "none"] = "all") -> RunConfig:
    """The verbs' one config loader: the file with its --set overrides, and the input paths `inputs` names
    checked before any heavy work."""
    from tasks.lib.run.preflight import check_inputs

    loaded = load_config(config, overrides)
    if inputs != "none":
        check_inputs(loaded, benchmarks=inputs == "all")
    return loaded


def _use_local_stack() -> None:
    from flows.stack import stack_env

    for key, value in stack_env().items():
        os.environ.setdefault(key, value)


def run(
    config: str | None, overrides: list[str], run_id: str | None, new_run_id: str | None, skip_if_unchanged: bool
) -> ExitCode:
    if run_id and new_run_id:
        raise ConfigError("--run-id resumes a run, --new-run-id starts one: give one of them")
    if run_id:
        config, overrides = resume_settings(config, overrides, run_id)
    elif config is None:
        raise ConfigError("give a config file (e.g. configs/demo.yaml), or --run-id of a run to resume")
    _use_local_stack()  # before the config loads: with the stack up, its MLflow server is the default store
    loaded = load_checked(config, overrides)  # refuse a bad config before Prefect starts
    if new_run_id:
        from tasks.lib.core.run_layout import RunLayout

        if RunLayout.of(loaded.runs_dir() / new_run_id).is_pipeline_run():
            raise ConfigError(f"--new-run-id {new_run_id}: that run exists; resume it with --run-id {new_run_id}")
        run_id = new_run_id
    from flows.finetune import finetune

    result = finetune(config, overrides, run_id=run_id, skip_if_unchanged=skip_if_unchanged)
    print(summaries.run_summary(result, loaded.tracking.uri))
    if result.skipped:
        return ExitCode.OK
    if result.forgetting is None or not result.forgetting.passed:
        return ExitCode.GATE_NOT_PASSED
    registration = result.registration
    if registration is not None and not registration.registered and loaded.registry.enabled:
        return ExitCode.NOT_REGISTERED
    return ExitCode.OK


def resume_settings(config: str | None, overrides: list[str], run_id: str) -> tuple[str, list[str]]:
    """The config file and overrides that resume `run_id`: as given, else those it was started with (its own
    config.json when no file is given; its stored overrides when no --set is given). An unknown id is refused."""
    import json

    from tasks.lib.config.config_paths import project_root
    from tasks.lib.core.run_layout import started_run

    if config is None:
        runs = project_root(Path.cwd()) / "runs"
        run = started_run(run_id, sorted(folder for folder in runs.glob("*") if folder.is_dir()))
        return str(run.config_file), overrides
    run = started_run(run_id, [load_config(config, overrides).runs_dir()])
    if not overrides and run.overrides_file.is_file():
        overrides = json.loads(run.overrides_file.read_text(encoding="utf-8"))
    return config, overrides


def validate(config: str, overrides: list[str]) -> ExitCode:
    from tasks.lib.dataset.data_formats import DataError
    from tasks.lib.dataset.sources import check_sources

    loaded = load_checked(config, overrides)
    try:
        notes = check_sources(loaded.data)
    except DataError as error:
        raise ConfigError(f"{config}: the data does not fit the config:\n  {error}") from None
    for note in notes:
        print(f"note: {note}")
    print(f"{config}: valid, data shape checked (config hash {loaded.fingerprint()})")
    return ExitCode.OK


def prepare(config: str, overrides: list[str]) -> ExitCode:
    from tasks.data import run_prepare

    ref = run_prepare(load_checked(config, overrides, inputs="data"))
    print(f"{'up to date' if ref.reused else 'prepared'}: {ref.processed_dir} {ref.stats}")
    return ExitCode.OK


def clean_data(config: str, overrides: list[str], all_versions: bool) -> ExitCode:
    from tasks.data import clean_prepared

    removed = clean_prepared(load_checked(config, overrides, inputs="none"), keep_current=not all_versions)
    print("\n".join(f"removed {folder}" for folder in removed) or "nothing to remove")
    return ExitCode.OK


def train(config: str, overrides: list[str], run_id: str) -> ExitCode:
    from tasks.data import run_prepare
    from tasks.pipeline_run import start_pipeline_run
    from tasks.train import run_training

    loaded = load_checked(config, overrides, inputs="data")
    data = run_prepare(loaded)
    print(run_training(loaded, start_pipeline_run(loaded, run_id, data), data).model_dump_json(indent=2))
    return ExitCode.OK


def fetch_demo_model(out_dir: str) -> ExitCode:
    from tasks.io.models import fetch_demo_model as fetch

    print(f"wrote {fetch(Path(out_dir))}")
    return ExitCode.OK


def prepare_benchmarks(raw_dir: str, out_dir: str) -> ExitCode:
    from tasks.lib.general_benchmarks.benchmark_data import prepare_benchmarks as prepare_all

    print(prepare_all(Path(raw_dir), Path(out_dir)))
    return ExitCode.OK


def benchmarks(data_dir: str) -> ExitCode:
    from tasks.lib.config.benchmark_names import packaged_benchmarks

    print(summaries.benchmarks_table(packaged_benchmarks(Path(data_dir))))
    return ExitCode.OK


def data_updated(config: str, overrides: list[str]) -> ExitCode:
    from tasks.data import data_version
    from tasks.io.events import DATA_UPDATED, emit_data_updated

    loaded = load_checked(config, overrides, inputs="none")
    _use_local_stack()
    version = data_version(loaded)
    event_id = emit_data_updated(loaded.name, version, loaded.data.path)
    print(f"emitted {DATA_UPDATED} for {loaded.name} (data version {version}, event {event_id})")
    return ExitCode.OK


def score_base(config: str, overrides: list[str]) -> ExitCode:
    from tasks.data import run_prepare
    from tasks.evaluate import score_base_task
    from tasks.forgetting import score_base_model
    from tasks.lib.core import threads

    loaded = load_checked(config, overrides)
    threads.hold_share(loaded.resources.configured_threads())
    task, cached = score_base_task(loaded, run_prepare(loaded))
    print(summaries.base_task_summary(task, cached, loaded.forgetting.cache_dir))
    if loaded.forgetting.enabled and loaded.forgetting.benchmarks:
        scores, cached = score_base_model(loaded)
        print(summaries.base_scores_summary(scores, cached, loaded.forgetting.cache_dir))
    return ExitCode.OK


def rerun_step(step: str, run_dir: str) -> ExitCode:
    from flows.steps import rerun_step as rerun

    print(rerun(step, Path(run_dir)).model_dump_json(indent=2, exclude={"markdown"}))
    return ExitCode.OK


def _typed_prompts(model: str) -> Iterator[str]:
    print(f"chatting with {model} (empty line or Ctrl-D to quit)")
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            return
        if not prompt:
            return
        yield prompt


def chat(model: str, prompt: str | None, system: str | None, max_new_tokens: int) -> ExitCode:
    from tasks.io.models import load_chat_model
    from tasks.lib.modeling.generation import PromptTooLong, chat_reply

    loaded, tokenizer = load_chat_model(model)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for text in [prompt] if prompt is not None else _typed_prompts(model):
        turn = [*history, {"role": "user", "content": text}]
        try:
            reply = chat_reply(loaded, tokenizer, turn, max_new_tokens).text
        except PromptTooLong as error:  # one line; an interactive session goes on
            print(f"error: {error}", file=sys.stderr)
            if prompt is not None:
                return ExitCode.USER_ERROR
            continue
        history.extend([turn[-1], {"role": "assistant", "content": reply}])
        print(reply if prompt is not None else f"model> {reply}")
    return ExitCode.OK


def check_run(run_dir: str, report: str | None) -> ExitCode:
    from flows.check_run import check_run as check
    from flows.check_run import run_report
    from tasks.lib.core.run_layout import RunLayout

    newest = RunLayout.newest_finished(Path(run_dir))
    result = check(newest)
    print(summaries.check_summary(newest, result))
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(run_report(newest, result))
        print(f"report written to {report}")
    return ExitCode.OK if result.ok else ExitCode.NOT_REGISTERED


def sweep(config: str, overrides: list[str]) -> ExitCode:
    loaded = load_checked(config, overrides)
    if loaded.sweep is None:
        raise ConfigError(f"{config} has no sweep section: say what to search (see docs/sweeps.md)")
    _use_local_stack()
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "a sweep dispatches its trials to a work pool, which needs a Prefect server: start one (`make up`, or "
            f"set PREFECT_API_URL) and workers (`prefect worker start --pool {loaded.sweep.work_pool}`, one per "
            "machine or GPU)"
        )
    from flows.sweep import sweep as run_sweep

    result = run_sweep(config_path=config, overrides=overrides)
    print(summaries.sweep_summary(result))
    return ExitCode.OK if result.best_run_id else ExitCode.GATE_NOT_PASSED


def deploy(config: str, overrides: list[str], pool: str, name: str, source: str | None) -> ExitCode:
    load_checked(config, overrides)
    _use_local_stack()
    from flows.serve import deploy_to_pool

    parameters = {"config_path": config, "overrides": overrides}
    description = "Fine-tune, evaluate, check forgetting, merge and register, on a work pool's workers."
    deployed = deploy_to_pool(name, pool, source, parameters, description=description, tags=["qlora"])
    print(f"deployed {deployed} to work pool {pool!r}; start workers with: prefect worker start --pool {pool}")
    return ExitCode.OK


def serve(config: str) -> ExitCode:
    load_config(config)
    from flows.serve import serve_deployments

    serve_deployments(config)
    return ExitCode.OK


def stack(action: str, config: str) -> ExitCode:
    from flows import stack as local_stack

    if action == "up":
        print(summaries.stack_started(local_stack.up(config)))
        return ExitCode.OK
    if action == "down":
        print(f"stopped: {', '.join(local_stack.down()) or 'nothing was running'}")
        return ExitCode.OK
    report = local_stack.status()
    print(summaries.stack_status(report))
    return ExitCode.OK if all(entry["running"] for entry in report.values()) else ExitCode.USER_ERROR
