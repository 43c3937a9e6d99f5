"""Exact match of free-text answers, optionally case- and punctuation-insensitive."""

import re
import string

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions that equal their reference after whitespace collapsing."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): predicted answers.
    references (list[str]): reference answers.
    ignore_case (bool): compare lower-cased strings. Default False.
    ignore_punctuation (bool): drop ASCII punctuation before comparing. Default False.
Returns:
    exact_match (float): in [0, 1].
"""

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _clean(text: str, ignore_case: bool, ignore_punctuation: bool) -> str:
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCTUATION)
    return re.sub(r"\s+", " ", text).strip()


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False, ignore_punctuation=False):
        if not references:
            return {"exact_match": 0.0}
        hits = sum(
            _clean(p, ignore_case, ignore_punctuation) == _clean(r, ignore_case, ignore_punctuation)
            for p, r in zip(predictions, references, strict=True)
        )
        return {"exact_match": hits / len(references)}
