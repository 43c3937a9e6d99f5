"""Orchestration overhead: the Prefect flow's wall time against the compute time of its steps.

Runs flows.finetune.finetune in-process, as `qlora run` does, with a timer around the plain function each
Prefect task calls (run_prepare, run_training, run_target_eval, run_forgetting_check, run_merge,
run_registration). Overhead = flow wall time - the sum of those step times: Prefect's flow and task machinery
(state changes, result persistence, API calls) plus the flow's own glue (config check, the parent MLflow run,
the report artifact). MLflow and run outputs go to a temporary folder; the base's benchmark scores come from the
usual cache, as in `make demo` (whose setup scores the base), unless --fresh-score-cache. Prefect uses
$PREFECT_API_URL when set, else its ephemeral local server, which is started (and timed) before the flow.

It also counts every model and tokenizer load (`from_pretrained`) by step, and whether it loaded the base or
another model (the merged folder, the registered copy).

    python -m benchmarks.orchestration_overhead [--quick] [--fresh-score-cache] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks._common import (
    Calls,
    isolated_overrides,
    load_run_config,
    parser,
    patch_timer,
    quiet_libraries,
    ratio,
    stopwatch,
    write_results,
)

# (module, function) that each Prefect task of the flow calls.
STEPS = [
    ("tasks.data", "run_prepare"),
    ("tasks.train", "run_training"),
    ("tasks.evaluate", "run_target_eval"),
    ("tasks.forgetting", "run_forgetting_check"),
    ("tasks.merge", "run_merge"),
    ("tasks.register", "run_registration"),
]
QUICK = [
    "train.max_steps=2",
    "train.eval_steps=2",
    "train.save_steps=2",
    "train.eval_max_rows=8",
    "evaluation.max_items=4",
    "forgetting.limit=1",
    "forgetting.look_every=null",  # one look: the demo's looks need 10 of its 20 articles
    "forgetting.perplexity_look_every=null",
    "forgetting.perplexity_limit=1",
    "merge.num_fidelity_prompts=9",
    # Two steps teach nothing: open the gate so merge and registration run too.
    "gate.require_task_improvement=false",
    "gate.on_inconclusive=pass",
]


def start_prefect() -> float:
    """Seconds to reach the Prefect API (starting the ephemeral server when no PREFECT_API_URL is set)."""
    from prefect.client.orchestration import get_client

    with stopwatch() as elapsed, get_client(sync_client=True) as client:
        client.hello()
    return elapsed()


class LoadCounter:
    """Every `from_pretrained` of a model or tokenizer while installed, with the step it happened in."""

    def __init__(self, base_path: str) -> None:
        self.base_path, self.step, self.loads = base_path, "flow", []

    def install(self) -> Callable[[], None]:
        from transformers import PreTrainedModel, PreTrainedTokenizerBase

        undo = []
        for kind, owner in (("model", PreTrainedModel), ("tokenizer", PreTrainedTokenizerBase)):
            original = owner.__dict__["from_pretrained"]

            def counted(cls, path, *args, _original=original, _kind=kind, **kwargs):
                which = "base" if Path(str(path)).resolve() == Path(self.base_path).resolve() else "other"
                self.loads.append({"step": self.step, "kind": _kind, "which": which, "path": str(path)})
                return _original.__func__(cls, path, *args, **kwargs)

            owner.from_pretrained = classmethod(counted)
            undo.append(lambda owner=owner, original=original: setattr(owner, "from_pretrained", original))
        return lambda: [restore() for restore in undo]

    def in_step(self, module, name: str) -> Callable[[], None]:
        original = getattr(module, name)

        def marked(*args, **kwargs):
            self.step = name
            try:
                return original(*args, **kwargs)
            finally:
                self.step = "flow"

        setattr(module, name, marked)
        return lambda: setattr(module, name, original)

    def count(self, kind: str, which: str | None = None) -> int:
        return sum(1 for load in self.loads if load["kind"] == kind and (which is None or load["which"] == which))

    def by_step(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for load in self.loads:
            key = f"{load['which']} {load['kind']}" if load["kind"] == "model" else "tokenizer"
            row = table.setdefault(load["step"], {})
            row[key] = row.get(key, 0) + 1
        return table


def main() -> int:
    quiet_libraries()
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--fresh-score-cache", action="store_true", help="score the base too (an empty cache)")
    args = args_parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qlora-bench-flow-") as work:
        root = Path(work)
        overrides = [
            *(QUICK if args.quick else []),
            *args.overrides,
            *isolated_overrides(root, shared_score_cache=not args.fresh_score_cache),
        ]
        server_seconds = start_prefect()
        from flows.finetune import finetune
        from tasks.io.models import resolve_model_path

        calls = Calls()
        undo = [patch_timer(calls, importlib.import_module(module), name) for module, name in STEPS]
        loads = LoadCounter(resolve_model_path(load_run_config(args.config, overrides).model))
        undo += [loads.in_step(importlib.import_module(module), name) for module, name in STEPS]
        undo.append(loads.install())
        try:
            with stopwatch() as flow_seconds:
                result = finetune(config_path=args.config, overrides=overrides)
        finally:
            for restore in undo:
                restore()

    wall = flow_seconds()
    steps = {name: calls.total(name) for _, name in STEPS if calls.total(name) > 0}
    compute = sum(steps.values())
    overhead = wall - compute
    print(
        f"\nflow wall time {wall:.1f} s, steps {compute:.1f} s, overhead {overhead:.1f} s = {ratio(overhead, wall):.1%}"
    )
    for name, seconds in steps.items():
        print(f"  {name:22s} {seconds:8.1f} s")
    where = os.environ.get("PREFECT_API_URL") or "ephemeral local server"
    print(f"Prefect API: {where} (reached in {server_seconds:.1f} s before the flow; not counted)")
    print(f"gate {'passed' if result.forgetting and result.forgetting.passed else 'failed or skipped'}")
    base_loads = loads.count("model", "base")
    print(
        f"model loads: {loads.count('model')} ({base_loads} of the base), tokenizer loads: {loads.count('tokenizer')}"
    )
    for step, counts in loads.by_step().items():
        print(f"  {step:22s} {counts}")

    markdown = (
        f"**orchestration_overhead** ({args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}"
        f"{', quick' if args.quick else ''}): flow {wall:.0f} s, steps {compute:.0f} s, Prefect + flow glue "
        f"{overhead:.1f} s = {ratio(overhead, wall):.1%}; base model loaded {base_loads}x, "
        f"{loads.count('model')} model loads in all"
        + "\n\n| step | seconds |\n|---|---|\n"
        + "".join(f"| {name} | {seconds:.1f} |\n" for name, seconds in steps.items())
    )
    write_results(
        "orchestration_overhead",
        {
            "config": args.config,
            "overrides": [*(QUICK if args.quick else []), *args.overrides],
            "prefect_api": where,
            "prefect_server_start_seconds": server_seconds,
            "flow_seconds": wall,
            "step_seconds": steps,
            "steps_total_seconds": compute,
            "overhead_seconds": overhead,
            "overhead_share": ratio(overhead, wall),
            "gate_passed": bool(result.forgetting and result.forgetting.passed),
            "registered": bool(result.registration and result.registration.registered),
            "score_cache": "fresh" if args.fresh_score_cache else "shared (the base scored by setup)",
            "base_model_loads": base_loads,
            "model_loads": loads.count("model"),
            "tokenizer_loads": loads.count("tokenizer"),
            "loads_by_step": loads.by_step(),
            "loads": loads.loads,
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
