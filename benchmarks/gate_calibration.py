"""How often does the forgetting gate say fail / pass / inconclusive? A seeded simulation, no model needed.

For each setting (items per benchmark n, 4 accuracy benchmarks, a share of items whose answer changes by
chance between base and tuned: the demo measured 3-10%) it simulates fine-tunes with no effect and with a real
drop of 1.5x the margin on one benchmark (on top of the chance changes), and reports:
- no effect -> fail (family-wise false alarm; target <= 0.05),
- 1.5x-margin drop -> shown (fail: beyond the margin, or drop: against no change; either keeps the model out
  even under `gate.on_inconclusive: pass`; target >= 0.80), and how often it is shown beyond the margin (fail),
- no effect -> pass (how often an honest run ends conclusively),
- the minimum drop non-inferiority can be shown for with 80% power at that n.

And for the perplexity row (WikiText): how often it passes with the true rise exactly at the margin (its size;
target <= the level it is tested at: alpha/k for the first of k Holm steps, or alpha), with normal and with
strongly right-skewed per-document errors, and how often an unchanged model passes, for 5, 20 and 40 documents.

And the demo's whole family of five rows, as the demo judges it (group-sequential) and in one look at the maximum:
per row and family-wise, how often rows that truly dropped exactly the margin pass (one row, or all four: drops
spread over the benchmarks), how often WikiText passes with its rise exactly at the margin, how often an unchanged
model is kept out, and how many items a row scores. Clustered items: tests/unit/test_sequential.py.

    python -m benchmarks.gate_calibration [--quick]
"""

from __future__ import annotations

import math

from benchmarks._common import parser, write_results
from benchmarks.gate_simulation import family_rates, perplexity_pass_rate, verdict_rates
from tasks.lib.config import GateConfig, RunConfig, load_config
from tasks.lib.gate import stats

K = 4
DOCUMENTS = (5, 20, 40)
DISCORDANCE = (0.05, 0.10, 0.15, 0.20)  # the demo measured 3-10% per benchmark


def family_calibration(gate: GateConfig, demo: RunConfig, reps: int) -> tuple[list[dict], list[str]]:
    """The demo's five rows under the demo's design and under one look at the maximum (issue 25, item 9)."""
    margin, n = gate.max_accuracy_drop / 100, demo.forgetting.limit
    rows, table = [], []
    for design, every in (("sequential", demo.forgetting.look_every), ("one look", None)):
        for discordance in (0.05, 0.10):

            def rates(
                drops: list[float], rise: float, seed: int, every: int | None = every, discordance: float = discordance
            ) -> dict:
                documents = demo.forgetting.perplexity_look_every if every else None
                return family_rates(gate, n, every, drops, rise, discordance, reps, seed, document_look_every=documents)

            unchanged = rates([0.0] * 4, 0.0, 31)
            one_at_margin = rates([margin, 0.0, 0.0, 0.0], 0.0, 32)
            all_at_margin = rates([margin] * 4, 0.0, 33)
            wikitext_at_margin = rates([0.0] * 4, gate.max_perplexity_increase, 34)
            one_beyond = rates([1.5 * margin, 0.0, 0.0, 0.0], 0.0, 35)
            accuracy = [name for name in unchanged["rows"] if name != "wikitext"]
            row = {
                "design": design,
                "discordance": discordance,
                "unchanged_kept_out": 1.0 - unchanged["family"]["all pass"],
                "unchanged_mean_items": sum(unchanged["rows"][name]["mean_items"] for name in accuracy) / 4,
                "one_at_margin_passes": one_at_margin["rows"]["hellaswag"]["pass"],
                "all_at_margin_any_passes": all_at_margin["family"]["any pass at the margin"],
                "wikitext_at_margin_passes": wikitext_at_margin["rows"]["wikitext"]["pass"],
                "one_beyond_shown_worse": one_beyond["rows"]["hellaswag"]["shown_worse"],
            }
            rows.append(row)
            table.append(
                f"| {design} | {discordance:.2f} | {row['unchanged_kept_out']:.3f} | "
                f"{row['unchanged_mean_items']:.0f} of {n} | {row['one_at_margin_passes']:.3f} | "
                f"{row['all_at_margin_any_passes']:.3f} | {row['wikitext_at_margin_passes']:.3f} | "
                f"{row['one_beyond_shown_worse']:.3f} |"
            )
    return rows, table


def main() -> None:
    args = parser(__doc__).parse_args()
    demo: RunConfig = load_config(args.config, args.overrides)
    gate: GateConfig = demo.gate
    reps = 200 if args.quick else 2000
    settings = {"demo": demo.forgetting.limit, "default": 500}
    rows, table = [], []
    margin = gate.max_accuracy_drop / 100
    for label, n in settings.items():
        for discordance in DISCORDANCE:
            null = verdict_rates(gate, n, K, 0.0, discordance, reps, seed=11)
            drop = verdict_rates(gate, n, K, 1.5 * margin, discordance, reps, seed=12)
            sd = math.sqrt(discordance)
            detectable = 100 * stats.detectable_margin(sd, n, gate.alpha / K)
            needed = stats.items_needed(sd, margin, gate.alpha / K)
            row = {
                "setting": label,
                "items_per_benchmark": n,
                "discordance": discordance,
                "no_effect_fail": null["fail"],
                "no_effect_pass": null["pass"],
                "drop_1_5x_margin_shown": drop["fail"] + drop["drop"],
                "drop_1_5x_margin_fail": drop["fail"],
                "detectable_drop_pts": detectable,
                "items_for_80pct_power": needed,
            }
            rows.append(row)
            table.append(
                f"| {label} | {n} | {discordance:.2f} | {null['fail']:.3f} | {drop['fail'] + drop['drop']:.3f} | "
                f"{drop['fail']:.3f} | {null['pass']:.3f} | {detectable:.1f} | {needed} |"
            )
    ppl_rows, ppl_table = [], []
    ppl_margin = gate.max_perplexity_increase
    for n_docs in DOCUMENTS:
        for level in (gate.alpha, gate.alpha / (K + 1)):

            def rate(errors: str, rise: float, seed: int) -> float:
                return perplexity_pass_rate(n_docs, level, errors, rise, ppl_margin, reps, seed)  # noqa: B023

            row = {
                "documents": n_docs,
                "level": level,
                "at_margin_pass_normal": rate("normal", ppl_margin, 21),
                "at_margin_pass_skewed": rate("skewed", ppl_margin, 22),
                "no_change_pass": rate("normal", 0.0, 23),
            }
            ppl_rows.append(row)
            ppl_table.append(
                f"| {n_docs} | {level:.4g} | {row['at_margin_pass_normal']:.3f} | {row['at_margin_pass_skewed']:.3f} "
                f"| {row['no_change_pass']:.3f} |"
            )
    family_rows, family_table = family_calibration(gate, demo, reps)
    markdown = "\n".join(
        [
            f"Gate calibration ({reps} simulated fine-tunes per cell, {K} accuracy benchmarks, margin "
            f"{gate.max_accuracy_drop:g} points, family-wise alpha {gate.alpha}, Holm):",
            "",
            "| setting | items | discordance | no effect -> fail (<= 0.05) "
            "| 1.5x-margin drop -> fail or drop (>= 0.80) | 1.5x-margin drop -> fail | no effect -> pass "
            "| detectable drop (pts) | items for 80% power |",
            "|---|---|---|---|---|---|---|---|---|",
            *table,
            "",
            f"Perplexity row ({reps} simulated fine-tunes per cell, margin +{100 * ppl_margin:g}%, documents of "
            "WikiText-like lengths with 3 points of spread per document; t-test on the jackknife log ratio):",
            "",
            "| documents | level | rise at the margin -> pass, normal errors (<= level) "
            "| rise at the margin -> pass, right-skewed errors | no change -> pass |",
            "|---|---|---|---|---|",
            *ppl_table,
            "",
            f"The demo's family ({reps} simulated fine-tunes per cell): 4 accuracy rows of at most "
            f"{demo.forgetting.limit} items and a 20-document perplexity row, judged as the demo judges them "
            f"(group-sequential, a look every {demo.forgetting.look_every} items, Bonferroni) and in one look at "
            f"{demo.forgetting.limit} items (Holm). Per row: how often a row that truly dropped exactly the margin "
            "passes (its size, <= alpha/5 = 0.01 sequential); family-wise: how often any of the rows at the margin "
            "passes (<= 0.05); how often an unchanged model is kept out (not every row passes); the items an "
            "accuracy row scores on average.",
            "",
            "| design | discordance | unchanged: kept out | unchanged: mean items a row | one row at the margin: it "
            "passes | all four at the margin: any passes | WikiText at the margin: it passes "
            "| one row 1.5x the margin: shown worse |",
            "|---|---|---|---|---|---|---|---|",
            *family_table,
        ]
    )
    results = {"reps": reps, "rows": rows, "perplexity_rows": ppl_rows, "family_rows": family_rows}
    write_results("gate_calibration", results, markdown, args.quick)


if __name__ == "__main__":
    main()
