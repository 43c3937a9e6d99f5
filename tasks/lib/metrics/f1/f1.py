"""Macro F1 over string labels.

The classes are the labels that occur in the references: a prediction outside them (the model
answered something else) counts as a miss for its reference's class, but adds no class of its own.
"""

import datasets
import evaluate

_DESCRIPTION = "Unweighted mean over reference classes of per-class F1 (2PR/(P+R), 0 when undefined)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): predicted labels.
    references (list[str]): reference labels.
Returns:
    f1 (float): macro F1 in [0, 1].
"""


class F1(evaluate.Metric):
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
        pairs = list(zip(predictions, references, strict=True))
        classes = sorted(set(references))
        if not classes:
            return {"f1": 0.0}
        scores = []
        for label in classes:
            tp = sum(p == label and r == label for p, r in pairs)
            fp = sum(p == label and r != label for p, r in pairs)
            fn = sum(p != label and r == label for p, r in pairs)
            scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        return {"f1": sum(scores) / len(scores)}
