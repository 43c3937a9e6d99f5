"""The local evaluate metric module, loaded offline from its folder once per metric, on hand-made answers."""

from __future__ import annotations

import os

import evaluate
import pytest

from tasks.lib.evaluation.task_eval import METRIC_MODULE


def _load(name: str):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(str(METRIC_MODULE), config_name=name, keep_in_memory=True)


def test_accuracy_three_of_four():
    score = _load("accuracy").compute(
        predictions=["positive", "negative", "positive", "positive"],
        references=["positive", "negative", "negative", "positive"],
    )
    assert score == {"accuracy": pytest.approx(0.75)}


def test_exact_match_options():
    metric = _load("exact_match")
    preds, refs = ["Paris.", "  the  dog", "cat"], ["paris", "the dog", "dog"]
    assert metric.compute(predictions=preds, references=refs)["exact_match"] == pytest.approx(1 / 3)
    relaxed = metric.compute(predictions=preds, references=refs, ignore_case=True, ignore_punctuation=True)
    assert relaxed["exact_match"] == pytest.approx(2 / 3)


def test_macro_f1_by_hand():
    preds = ["positive", "positive", "negative", "positive", "maybe"]
    refs = ["positive", "negative", "negative", "positive", "negative"]
    # positive: tp=2 fp=1 fn=0 -> 4/5; negative: tp=1 fp=0 fn=2 -> 2/4; "maybe" adds no class.
    expected = (4 / 5 + 2 / 4) / 2
    assert _load("f1").compute(predictions=preds, references=refs)["f1"] == pytest.approx(expected)


def test_f1_perfect_and_all_wrong():
    metric = _load("f1")
    assert metric.compute(predictions=["a", "b"], references=["a", "b"])["f1"] == pytest.approx(1.0)
    assert metric.compute(predictions=["b", "a"], references=["a", "b"])["f1"] == pytest.approx(0.0)


def test_rouge_identical_and_partial():
    metric = _load("rouge")
    same = metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    assert same == {k: pytest.approx(1.0) for k in ("rouge1", "rouge2", "rougeL")}
    # prediction "the cat" vs reference "the cat sat": unigram P=1, R=2/3 -> F=0.8; bigram P=1, R=1/2 -> 2/3.
    part = metric.compute(predictions=["the cat"], references=["the cat sat"])
    assert part["rouge1"] == pytest.approx(0.8)
    assert part["rouge2"] == pytest.approx(2 / 3)
    assert part["rougeL"] == pytest.approx(0.8)
    disjoint = metric.compute(predictions=["dog"], references=["cat"])
    assert disjoint["rouge1"] == 0.0


def test_an_unknown_metric_is_refused_by_name():
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        _load("bleu")
