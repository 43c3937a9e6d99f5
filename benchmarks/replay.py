"""Does replay help against forgetting? The whole pipeline twice on the demo at a deliberately aggressive learning
rate, without and with general instruction rows (Alpaca-GPT4) mixed into training, everything else equal (same
seed, data, steps, test items and benchmark items).

Prints, for each variant, the paired task gain and every forgetting row (tuned - base on the same items, with its
interval and verdict), and the change replay made to each; writes benchmarks/results/replay.json|md. Nothing is
registered; prepared data, MLflow and run folders go to a temporary folder (base benchmark scores come from the
usual cache).

    python -m benchmarks.replay [--quick] [--learning-rate 2e-3] [--fraction 0.3] [--set k=v]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, isolated_overrides, parser, quiet_libraries, stopwatch, write_results

REPLAY_SOURCE = "data/raw/alpaca_gpt4_en_demo/alpaca_en_demo.json"


def run_variant(config_path: str, overrides: list[str]) -> dict[str, Any]:
    from flows.finetune import finetune

    with stopwatch() as elapsed:
        result = finetune(config_path=config_path, overrides=overrides)
    gate = result.forgetting.gate
    rows = [*gate.get("rows", []), gate["task"]]
    return {
        "seconds": round(elapsed(), 1),
        "replay_rows": result.data.stats.get("replay_rows", 0),
        "train_rows": result.data.stats["rows"]["train"],
        "verdict": gate.get("verdict"),
        "rows": {
            row["name"]: {
                key: row.get(key) for key in ("kind", "base", "tuned", "delta", "ci_low", "ci_high", "verdict")
            }
            for row in rows
        },
    }


def _cell(row: dict) -> str:
    if row.get("delta") is None:
        return "-"
    unit = "%" if row["kind"] == "perplexity" else " pts"
    return f"{row['delta']:+.2f}{unit} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] {row['verdict']}"


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--learning-rate", type=float, default=2e-3, help="aggressive on purpose (demo: 3e-4)")
    args_parser.add_argument("--fraction", type=float, default=0.3, help="share of training rows that are replay")
    args = args_parser.parse_args()
    quiet_libraries()
    common = [
        f"train.learning_rate={args.learning_rate}",
        "data.max_length=384",  # room for Alpaca answers; the same for both variants
        "registry.enabled=false",
        "forgetting.run_when_task_fails=true",  # the rows are what is compared, whatever the task row says
        *args.overrides,
    ]
    if args.quick:
        common += [
            "train.max_steps=6",
            "evaluation.max_items=16",
            "forgetting.limit=20",
            "forgetting.perplexity_limit=1",
        ]
    replay = [f"data.replay={{path: {REPLAY_SOURCE}, format: alpaca, fraction: {args.fraction}}}"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        isolated = isolated_overrides(root, shared_score_cache=True)  # the base's scores: the usual cache
        variants = {
            "without replay": run_variant(args.config, [*common, *isolated]),
            f"with replay ({args.fraction:g})": run_variant(args.config, [*common, *isolated, *replay]),
        }
    without_rows, with_rows = (variant["rows"] for variant in variants.values())
    names = list(without_rows)
    lines = [
        f"Replay at learning rate {args.learning_rate:g} ({'quick settings' if args.quick else 'demo settings'}): "
        "paired deltas, tuned - base on the same items, with the gate's simultaneous intervals.",
        "",
        "| row | " + " | ".join(variants) + " | change with replay |",
        "|---|---|---|---|",
    ]
    changes = {}
    for name in names:
        a, b = without_rows[name], with_rows.get(name, {})
        change = None if a.get("delta") is None or b.get("delta") is None else b["delta"] - a["delta"]
        changes[name] = change
        lines.append(f"| {name} | {_cell(a)} | {_cell(b)} | {'-' if change is None else f'{change:+.2f}'} |")
    lines += ["", "| | " + " | ".join(variants) + " |", "|---|---|---|"]
    for key in ("verdict", "train_rows", "replay_rows", "seconds"):
        lines.append(f"| {key} | " + " | ".join(str(v[key]) for v in variants.values()) + " |")
    markdown = "\n".join(lines)
    write_results(
        "replay",
        {
            "settings": {"config": args.config, "overrides": common, "replay": replay},
            "variants": variants,
            "change_with_replay": changes,
            "repo": str(REPO_ROOT),
        },
        markdown,
        args.quick,
    )


if __name__ == "__main__":
    main()
