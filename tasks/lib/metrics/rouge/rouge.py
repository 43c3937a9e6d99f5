"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge_score package), averaged over the examples."""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "Mean per-example ROUGE F-measure (rouge_score's tokenizer: lower-cased alphanumeric tokens)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): generated texts.
    references (list[str]): reference texts.
    use_stemmer (bool): Porter-stem tokens before matching. Default False.
Returns:
    rouge1, rouge2, rougeL (float): in [0, 1].
"""

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False):
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)
            for name in ROUGE_TYPES:
                totals[name] += scores[name].fmeasure
        n = max(len(references), 1)
        return {name: total / n for name, total in totals.items()}
