"""Shared-context scoring gives every lm-eval request the log-likelihood and greedy flag lm-eval's HFLM gives it,
on the tiny model and the real benchmark data, and restores the model's attention afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from lm_eval.models.huggingface import HFLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.lib.general_benchmarks.benchmark_scoring import evaluate_lm
from tasks.lib.general_benchmarks.shared_context_lm import (
    PackedRow,
    SharedContextLM,
    pack_groups,
    shared_context_scoring,
)

BENCHMARKS = ["hellaswag", "arc_easy", "piqa", "lambada"]


@pytest.fixture(autouse=True)
def _skip_env_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


def test_a_packed_row_holds_each_context_once_and_says_where_each_token_is_predicted() -> None:
    row = PackedRow()
    row.add_group([5, 6, 7], {0: [1, 2], 1: [3], 2: [4, 4, 4]})
    row.add_group([9], {3: [8, 8]})
    assert row.input_ids == [5, 6, 7, 1, 4, 4, 9, 8]
    assert row.positions == [0, 1, 2, 3, 3, 4, 0, 1]
    # The last context token predicts every first continuation token; each later token is predicted in place.
    assert row.predicting == {0: [2, 3], 1: [2], 2: [2, 4, 5], 3: [6, 7]}
    rows = pack_groups([([5, 6, 7], {0: [1, 2], 1: [3]}), ([9], {3: [8, 8]}), ([1] * 10, {4: [2], 5: [3]})], 6)
    assert [len(r.input_ids) for r in rows] == [6, 10]  # a group is never split, and a long one is alone


def _recording(lm: HFLM, seen: list) -> HFLM:
    score = lm._loglikelihood_tokens

    def record(requests, *args, **kwargs):
        answers = score(requests, *args, **kwargs)
        seen.extend(
            ((tuple(context), tuple(cont)), answer)
            for (_, context, cont), answer in zip(requests, answers, strict=True)
        )
        return answers

    lm._loglikelihood_tokens = record
    return lm


# Multiple choice (contexts shared by 2-5 continuations), Winogrande (two contexts, one continuation), LAMBADA
# (one continuation), WikiText (rolling windows).
RUNS = [
    (["hellaswag", "arc_easy", "piqa", "lambada"], 12),
    (["winogrande", "boolq", "openbookqa", "copa", "mmlu", "truthfulqa_mc1", "arc_challenge"], 6),
    (["wikitext"], 2),
]


def test_shared_context_scoring_matches_lm_eval_request_by_request(
    tiny_model_dir: Path, benchmark_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain_answers, shared_answers, rows = [], [], []
    plain = {}
    for names, limit in RUNS:
        lm = _recording(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), plain_answers)
        plain.update(evaluate_lm(lm, names, benchmark_data_dir, limit))
    score_row = SharedContextLM._score_row
    monkeypatch.setattr(
        SharedContextLM, "_score_row", lambda self, row, requests: rows.append(row) or score_row(self, row, requests)
    )
    shared = {}
    with shared_context_scoring(model) as lm_class:
        assert lm_class is SharedContextLM
        for names, limit in RUNS:
            lm = _recording(lm_class(pretrained=model, tokenizer=tokenizer, batch_size=8), shared_answers)
            shared.update(evaluate_lm(lm, names, benchmark_data_dir, limit))
    assert model.config._attn_implementation == "sdpa"  # restored

    # Requests longer than the tiny model's context (TruthfulQA's preamble) go to HFLM's own truncation.
    packed = sum(len(row.predicting) for row in rows)
    assert len(plain_answers) > 12 * 4 + 6 * 7 + 2 and len(shared_answers) / 2 < packed <= len(shared_answers)
    # Choices of one question share the position that predicts their first token: the context was computed once.
    assert any(len({indices[0] for indices in row.predicting.values()}) < len(row.predicting) for row in rows)
    shared_by_request = dict(shared_answers)
    for key, (log_likelihood, greedy) in plain_answers:
        assert shared_by_request[key][0] == pytest.approx(log_likelihood, rel=1e-5, abs=1e-4), key
        assert shared_by_request[key][1] == greedy, key
    for name in plain:
        assert shared[name].items == plain[name].items, name


def test_models_without_kept_logits_are_scored_by_hflm() -> None:
    class Wrapped:
        config = None

        def forward(self, *args, **kwargs):
            return None

    with shared_context_scoring(Wrapped()) as lm_class:
        assert lm_class is HFLM
