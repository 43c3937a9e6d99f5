"""Orchestration overhead: the Prefect flow's wall time against the compute time of its steps.

Runs flows.finetune.finetune in-process, as `qlora run` does, with a timer around the plain function each
Prefect task calls (run_prepare, run_training, run_target_eval, run_forgetting_check, run_merge,
run_registration). Overhead = flow wall time - the sum of those step times: Prefect's flow and task machinery
(state changes, result persistence, API calls) plus the flow's own glue (config check, the parent MLflow run,
the report artifact). MLflow, run outputs and the score cache go to a temporary folder. Prefect uses
$PREFECT_API_URL when set, else its ephemeral local server, which is started (and timed) before the flow.

    python benchmarks/orchestration_overhead.py [--quick] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Calls, isolated_overrides, parser, patch_timer, quiet_libraries, ratio, stopwatch, write_results  # noqa: E402

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


def main() -> int:
    quiet_libraries()
    args = parser(__doc__.splitlines()[0]).parse_args()

    with tempfile.TemporaryDirectory(prefix="qlora-bench-flow-") as work:
        root = Path(work)
        overrides = [
            *(QUICK if args.quick else []),
            *args.overrides,
            *isolated_overrides(root),
        ]
        server_seconds = start_prefect()
        from flows.finetune import finetune

        calls = Calls()
        undo = [patch_timer(calls, importlib.import_module(module), name) for module, name in STEPS]
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

    markdown = (
        f"**orchestration_overhead** ({args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}"
        f"{', quick' if args.quick else ''}): flow {wall:.0f} s, steps {compute:.0f} s, Prefect + flow glue "
        f"{overhead:.1f} s = {ratio(overhead, wall):.1%}"
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
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
