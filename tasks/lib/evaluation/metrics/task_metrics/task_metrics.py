"""The target task's metrics as one `evaluate` module (offline: `evaluate.load` of a hub metric needs the network);
the metric is the module's config name: accuracy, exact_match, f1 or rouge.

- accuracy: the share of predictions equal to their reference (normalise before).
- exact_match: the same after whitespace collapsing; optionally case- and punctuation-insensitive.
- f1: macro F1 over the classes that occur in the references; a prediction outside them counts as a miss for its
  reference's class but adds no class of its own.
- rouge: ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge_score's tokenizer), averaged over the examples.
"""

import re
import string

import datasets
import evaluate

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): predicted labels or texts.
    references (list[str]): reference labels or texts.
    ignore_case, ignore_punctuation (bool): exact_match only. Default False.
    use_stemmer (bool): rouge only, Porter-stem tokens before matching. Default False.
Returns:
    accuracy | exact_match | f1 | rouge1, rouge2, rougeL (float): in [0, 1].
"""
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _share(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def accuracy(predictions, references) -> dict[str, float]:
    return {"accuracy": _share([p == r for p, r in zip(predictions, references, strict=True)])}


def exact_match(predictions, references, ignore_case=False, ignore_punctuation=False) -> dict[str, float]:
    def clean(text: str) -> str:
        text = text.lower() if ignore_case else text
        text = text.translate(_PUNCTUATION) if ignore_punctuation else text
        return re.sub(r"\s+", " ", text).strip()

    return {"exact_match": _share([clean(p) == clean(r) for p, r in zip(predictions, references, strict=True)])}


def f1(predictions, references) -> dict[str, float]:
    pairs = list(zip(predictions, references, strict=True))
    scores = []
    for label in sorted(set(references)):
        tp = sum(p == label and r == label for p, r in pairs)
        fp = sum(p == label and r != label for p, r in pairs)
        fn = sum(p != label and r == label for p, r in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"f1": sum(scores) / len(scores) if scores else 0.0}


def rouge(predictions, references, use_stemmer=False) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / max(len(references), 1) for name, total in totals.items()}


METRICS = {"accuracy": accuracy, "exact_match": exact_match, "f1": f1, "rouge": rouge}


class TaskMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRICS:
            raise KeyError(f"unknown metric {self.config_name!r}; one of {', '.join(METRICS)}")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, **options):
        return METRICS[self.config_name](predictions, references, **options)
