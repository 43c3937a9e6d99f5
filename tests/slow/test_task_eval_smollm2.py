"""SmolLM2-135M-Instruct answers SST-2 sentiment prompts zero-shot through generate_answers/evaluate_task."""

from __future__ import annotations

import csv

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.lib.config import EvaluationConfig
from tasks.lib.evaluation.task_eval import evaluate_task, generate_answers
from tests.conftest import RAW_DATA_DIR

PROMPT = "Is the sentiment of this movie review positive or negative?\n\nReview: {sentence}"
LABELS = {"0": "negative", "1": "positive"}
N_ROWS = 20

pytestmark = pytest.mark.slow


def _sst2_rows(n: int) -> list[dict]:
    with (RAW_DATA_DIR / "sst2" / "dev.tsv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = []
        for index, record in enumerate(reader):
            if index >= n:
                break
            rows.append(
                {
                    "id": f"dev-{index}",
                    "messages": [
                        {"role": "user", "content": PROMPT.format(sentence=record["content"])},
                        {"role": "assistant", "content": LABELS[record["label"]]},
                    ],
                }
            )
    return rows


@pytest.fixture(scope="module")
def smollm2(demo_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    return model, tokenizer


def test_smollm2_answers_are_non_empty_and_batch_invariant(smollm2):
    model, tokenizer = smollm2
    rows = _sst2_rows(6)
    batched = generate_answers(model, tokenizer, rows, max_new_tokens=4, batch_size=6)
    single = generate_answers(model, tokenizer, rows, max_new_tokens=4, batch_size=1)
    assert len(batched) == len(rows)
    assert all(isinstance(a, str) and a.strip() for a in batched), batched
    assert batched == single


def test_smollm2_zero_shot_sst2(smollm2):
    model, tokenizer = smollm2
    cfg = EvaluationConfig(metrics=["accuracy", "f1"], max_items=N_ROWS, max_new_tokens=4, batch_size=8)
    result = evaluate_task(model, tokenizer, _sst2_rows(N_ROWS + 5), cfg)
    answers = [p.prediction for p in result.predictions]
    print(f"\nSmolLM2 zero-shot on {result.n_items} SST-2 dev rows: {result.metrics}\nanswers: {answers}")
    assert result.n_items == N_ROWS
    assert all(a.strip() for a in answers), answers
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
