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

    python benchmarks/gate_calibration.py [--quick]
"""

from __future__ import annotations

import math

from _common import parser, write_results

from tasks.lib import stats
from tasks.lib.config import GateConfig, RunConfig, load_config
from tasks.lib.gate_calibration import perplexity_pass_rate, verdict_rates

K = 4
DOCUMENTS = (5, 20, 40)
DISCORDANCE = (0.05, 0.10, 0.15, 0.20)  # the demo measured 3-10% per benchmark


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
        ]
    )
    results = {"reps": reps, "rows": rows, "perplexity_rows": ppl_rows}
    write_results("gate_calibration", results, markdown, args.quick)


if __name__ == "__main__":
    main()
