"""Accuracy over string labels: the share of predictions equal to their reference."""

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions that equal their reference string exactly (normalise before)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): predicted labels.
    references (list[str]): reference labels.
Returns:
    accuracy (float): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"accuracy": 0.0}
        hits = sum(p == r for p, r in zip(predictions, references, strict=True))
        return {"accuracy": hits / len(references)}
