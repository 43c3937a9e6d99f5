"""Target-task evaluation on the tiny model: normalisation, batched greedy generation, scoring, reports."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.lib.config import ConfigError, EvaluationConfig
from tasks.lib.evaluation.task_eval import (
    PredictionRecord,
    TaskEvalResult,
    choose_labels,
    compare,
    compute_metrics,
    evaluate_task,
    generate_answers,
    load_split,
    normalize_answer,
    render_prompts,
    task_markdown,
    write_predictions,
)

REVIEWS = [
    ("a great film", "positive"),
    ("awful , bad and long . the worst movie of the year , and that is saying a lot", "negative"),
    ("good", "positive"),
    ("it was bad", "negative"),
    ("this movie is the quick brown fox of films", "positive"),
]


def _rows(n: int = len(REVIEWS)) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "messages": [
                {
                    "role": "user",
                    "content": f"Is the sentiment of this movie review positive or negative?\n\n{text}",
                },
                {"role": "assistant", "content": label},
            ],
        }
        for i, (text, label) in enumerate(REVIEWS[:n])
    ]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    """The tiny model with large random weights: its greedy answers vary with the prompt (the saved
    initialisation answers every prompt with newlines, which would make batch-invariance vacuous)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Positive.", "positive"),
        (" negative\nbecause the review says so", "negative"),
        ('"Negative"', "negative"),
        ("  The   answer:  Paris!  ", "the answer: paris"),
        ("\n\npositive", "positive"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_all_lines():
    assert normalize_answer("Line one\nLine two.", first_line=False) == "line one line two"


def test_generate_answers_deterministic_and_batch_invariant(tiny_model, tiny_tokenizer):
    rows = _rows()
    tiny_tokenizer.padding_side = "right"
    first = generate_answers(tiny_model, tiny_tokenizer, rows, max_new_tokens=6, batch_size=3)
    second = generate_answers(tiny_model, tiny_tokenizer, rows, max_new_tokens=6, batch_size=3)
    single = generate_answers(tiny_model, tiny_tokenizer, rows, max_new_tokens=6, batch_size=1)
    assert len(first) == len(rows)
    assert all(isinstance(a, str) for a in first)
    assert len(set(first)) > 1, "answers should depend on the prompt"
    assert first == second
    assert first == single
    assert tiny_tokenizer.padding_side == "right"


def test_generate_answers_restores_training_mode(tiny_model, tiny_tokenizer):
    tiny_model.train()
    generate_answers(tiny_model, tiny_tokenizer, _rows(1), max_new_tokens=2, batch_size=1)
    assert tiny_model.training
    tiny_model.eval()


def test_generate_answers_works_through_peft(tiny_model, tiny_tokenizer):
    import copy

    from peft import LoraConfig, get_peft_model

    plain = generate_answers(tiny_model, tiny_tokenizer, _rows(3), max_new_tokens=4, batch_size=2)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.5)
    peft_model = get_peft_model(copy.deepcopy(tiny_model), lora)
    peft_model.train()
    # Fresh LoRA B is zero: the adapter must not change the greedy answers, and dropout must be off.
    wrapped = generate_answers(peft_model, tiny_tokenizer, _rows(3), max_new_tokens=4, batch_size=2)
    assert wrapped == plain
    assert peft_model.training


def test_generate_answers_rejects_rows_without_answer(tiny_model, tiny_tokenizer):
    rows = [{"id": "x", "messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(ValueError, match="id='x'"):
        generate_answers(tiny_model, tiny_tokenizer, rows, max_new_tokens=2, batch_size=1)


def test_compute_metrics_normalises_labels_and_expands_rouge():
    preds = ["Positive.", "negative\nextra", "positive", "negative"]
    refs = ["positive", "negative", "negative", "negative"]
    scores = compute_metrics(preds, refs, ["accuracy", "f1", "exact_match", "rouge"])
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["exact_match"] == pytest.approx(0.75)
    # positive: tp=1 fp=1 fn=0 -> 2/3; negative: tp=2 fp=0 fn=1 -> 4/5.
    assert scores["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert set(scores) == {"accuracy", "f1", "exact_match", "rouge1", "rouge2", "rougeL"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_compute_metrics_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"], ["accuracy"])


def test_evaluate_task_uses_first_max_items(tiny_model, tiny_tokenizer):
    cfg = EvaluationConfig(metrics=["accuracy", "f1"], max_items=3, max_new_tokens=3, batch_size=2, mode="generate")
    result = evaluate_task(tiny_model, tiny_tokenizer, _rows(), cfg)
    assert result.n_items == 3
    assert [p.id for p in result.predictions] == ["r0", "r1", "r2"]
    assert [p.reference for p in result.predictions] == ["positive", "negative", "positive"]
    assert result.predictions[0].prompt.endswith("a great film")
    assert set(result.metrics) == {"accuracy", "f1", "unlabelled_answers"}
    expected_accuracy = sum(p.correct for p in result.predictions) / 3
    assert result.metrics["accuracy"] == pytest.approx(expected_accuracy)
    assert [p.score for p in result.predictions] == [float(p.correct) for p in result.predictions]


def _result(preds: list[str], refs: list[str], metrics: dict[str, float]) -> TaskEvalResult:
    records = [
        PredictionRecord(id=f"r{i}", prompt=f"q{i}", reference=r, prediction=p, correct=p == r, score=float(p == r))
        for i, (p, r) in enumerate(zip(preds, refs, strict=True))
    ]
    return TaskEvalResult(metrics=metrics, n_items=len(records), predictions=records)


def test_compare_markdown_and_predictions_file(tmp_path):
    base = _result(["negative", "negative"], ["positive", "negative"], {"accuracy": 0.5, "f1": 0.3333})
    tuned = _result(["positive", "negative"], ["positive", "negative"], {"accuracy": 1.0, "f1": 1.0})
    table = compare(base, tuned)
    assert table["accuracy"] == {"base": 0.5, "tuned": 1.0, "delta": pytest.approx(0.5)}
    assert table["f1"]["delta"] == pytest.approx(0.6667)

    markdown = task_markdown(base, tuned, "accuracy")
    assert "| **accuracy** (primary) | 0.5000 | 1.0000 | +0.5000 |" in markdown
    assert "| f1 | 0.3333 | 1.0000 | +0.6667 |" in markdown

    path = write_predictions(base, tuned, tmp_path / "sub" / "predictions.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0] == {
        "id": "r0",
        "prompt": "q0",
        "reference": "positive",
        "base_prediction": "negative",
        "tuned_prediction": "positive",
        "base_answer": "",
        "tuned_answer": "",
        "base_correct": False,
        "tuned_correct": True,
        "base_score": 0.0,
        "tuned_score": 1.0,
    }


def test_compare_refuses_different_item_counts():
    base = _result(["a"], ["a"], {"accuracy": 1.0})
    tuned = _result(["a", "b"], ["a", "b"], {"accuracy": 1.0})
    with pytest.raises(ValueError, match="not comparable"):
        compare(base, tuned)


def test_load_split_reads_rows_and_names_bad_lines(tmp_path):
    rows = _rows(2)
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_split(tmp_path, "test") == rows

    bad = [
        json.dumps(rows[0]),
        "{not json",
        json.dumps({"id": "q", "messages": [{"role": "user", "content": "x"}]}),
    ]
    (tmp_path / "validation.jsonl").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match="validation.jsonl line 2: malformed JSON"):
        load_split(tmp_path, "validation")
    (tmp_path / "validation.jsonl").write_text("\n".join(bad[::2]) + "\n")
    with pytest.raises(ValueError, match="validation.jsonl line 2: 'messages' must end with the assistant answer"):
        load_split(tmp_path, "validation")

    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        load_split(tmp_path, "train")


def test_generate_answers_on_4bit_peft_model(tiny_model_dir, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, device_map="cpu")
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    answers = generate_answers(model, tiny_tokenizer, _rows(), max_new_tokens=3, batch_size=2)
    assert len(answers) == len(REVIEWS)
    assert answers == generate_answers(model, tiny_tokenizer, _rows(), max_new_tokens=3, batch_size=5)


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("Positive.", "positive"),
        ("The sentiment of this movie review is negative. The reviewer", "negative"),
        ("It is positive, not negative.", "positive"),  # a negated mention does not count
        ("It could be positive or negative.", "it could be positive or negative"),  # names both: not parsed
        ("This review isn't negative.", "this review isn't negative"),  # only a negated mention: no label
        ("The sentiment of this", "the sentiment of this"),
        ("nonnegative", "nonnegative"),  # whole words only
    ],
)
def test_answers_are_parsed_to_the_one_label_they_name(prediction: str, answer: str) -> None:
    from tasks.lib.evaluation.task_eval import label_set, parse_answer

    labels = label_set(["positive", "Negative", "positive"])
    assert labels == ["negative", "positive"]
    assert parse_answer(prediction, labels) == answer


def test_free_text_references_are_not_a_label_set() -> None:
    from tasks.lib.evaluation.task_eval import label_set, parse_answer

    references = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level."]
    assert label_set(references) is None
    assert parse_answer("Paris is the capital.", None) == "paris is the capital"


def _score(predictions: list[str], references: list[str], **settings) -> tuple[list[str], list[bool]]:
    from tasks.lib.config import EvaluationConfig
    from tasks.lib.evaluation.task_eval import normalize_answer, score_answers

    config = EvaluationConfig(**settings)
    answers, scored, labels = score_answers(predictions, references, config)
    correct = [
        answer == normalize_answer(reference, labels is not None, config.normalization)
        for answer, reference in zip(answers, scored, strict=True)
    ]
    return answers, correct


def test_free_text_is_scored_on_the_whole_answer() -> None:
    reference = "Step one: mix.\nStep two: bake."
    _, correct = _score([reference, "Step one: mix."], [reference, reference], answer_match="exact")
    assert correct == [True, False]  # a multi-line answer counts whole, not its first line


def test_an_extraction_rule_scores_what_it_extracts() -> None:
    pattern = r"####\s*(-?[\d,.]+)"
    references = ["She has 3 + 4 = 7 apples.\n#### 7", "#### 1,200"]
    predictions = ["3 + 4 = 7, so\n#### 7", "The answer is 1,200."]
    answers, correct = _score(predictions, references, answer_match="exact", extract_pattern=pattern)
    assert answers == ["7", ""] and correct == [True, False]  # no `####`: nothing extracted, wrong


def test_sql_normalisation_ignores_case_spacing_and_a_trailing_semicolon() -> None:
    reference = "SELECT name FROM users WHERE age > 30;"
    predictions = ["select name\n  from users where age > 30", "SELECT name FROM users WHERE age > 31"]
    _, correct = _score(predictions, [reference] * 2, answer_match="exact", normalization="sql")
    assert correct == [True, False]


def test_of_overlapping_labels_the_longest_wins_and_labels_can_be_stated() -> None:
    labels = ["positive", "very positive", "negative"]
    predictions = ["It is very positive.", "positive overall", "not very positive, rather negative"]
    answers, correct = _score(predictions, ["very positive", "positive", "negative"], labels=labels)
    assert answers == ["very positive", "positive", "negative"] and correct == [True, True, True]
    with pytest.raises(ValueError, match="regular expression"):
        _score(["x"], ["x"], extract_pattern="(unclosed")


def test_the_generation_budget_is_derived_from_the_references(tiny_tokenizer) -> None:
    from tasks.lib.evaluation.task_eval import derived_max_new_tokens

    short = ["positive", "negative"] * 10
    long = [" ".join(["word"] * 60)] * 20
    assert derived_max_new_tokens(tiny_tokenizer, short) < 12
    assert derived_max_new_tokens(tiny_tokenizer, long) >= 60 + 8  # a long answer is never cut


def _label_log_likelihood(model, tokenizer, row: dict, label: str) -> float:
    """One sequence at a time, no padding: the reference for the batched choice scoring."""
    prompt = render_prompts(tokenizer, [row])[0]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    label_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + label_ids])).logits[0]
    log_probs = torch.log_softmax(logits.float(), -1)
    return sum(log_probs[len(prompt_ids) - 1 + k, token].item() for k, token in enumerate(label_ids))


@pytest.mark.parametrize(
    ("labels", "tokens"),
    [(["A", "B", "C", "1"], {1}), (["negative", "positive", "neutral", "not entailment"], {1, 2, 6, 9})],
    ids=["one-token labels: one pass a prompt", "labels of several tokens"],
)
def test_choice_scoring_picks_the_most_likely_label_whatever_the_batching(tiny_model, tiny_tokenizer, labels, tokens):
    assert {len(tiny_tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels} == tokens
    rows = _rows()
    expected = [
        max(labels, key=lambda label, row=row: _label_log_likelihood(tiny_model, tiny_tokenizer, row, label))
        for row in rows
    ]
    for batch_size in (1, 4, 15):
        assert choose_labels(tiny_model, tiny_tokenizer, rows, labels, batch_size) == expected


def test_evaluation_modes_choices_and_both(tiny_model, tiny_tokenizer):
    rows = _rows()
    choices = evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(mode="choices", max_new_tokens=4))
    assert {record.prediction for record in choices.predictions} <= {"positive", "negative"}
    assert "unlabelled_answers" not in choices.metrics
    both = evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(mode="both", max_new_tokens=4))
    generated = evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(mode="generate", max_new_tokens=4))
    assert both.metrics["choices_accuracy"] == choices.metrics["accuracy"]
    assert both.metrics["accuracy"] == generated.metrics["accuracy"]
    # auto: both for classification (these answers form a label set), generate for free text.
    assert evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(max_new_tokens=4)).metrics == both.metrics
    assert "choices_accuracy" in task_markdown(both, both, "accuracy") and "decides" in task_markdown(
        both, both, "accuracy"
    )
    unlabelled = sum(record.answer not in ("positive", "negative") for record in generated.predictions)
    assert generated.metrics["unlabelled_answers"] == unlabelled / len(rows)


def test_choices_mode_refuses_free_text_answers(tiny_model, tiny_tokenizer):
    rows = _rows()
    for i, row in enumerate(rows):
        row["messages"][-1]["content"] = f"a long free text answer number {i} with many words"
    with pytest.raises(ConfigError, match="evaluation.mode"):
        evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(mode="choices"))
    free_text = evaluate_task(tiny_model, tiny_tokenizer, rows, EvaluationConfig(max_new_tokens=4))  # auto
    assert not any(name.startswith("choices_") for name in free_text.metrics)


def test_per_item_rouge_averages_to_the_rouge_metric():
    from tasks.lib.evaluation.task_eval import rouge_per_item

    preds = ["the cat sat on the mat", "a dog", "completely different words here", ""]
    refs = ["the cat sat on a mat", "a dog barked", "nothing alike", "empty prediction"]
    per_item = rouge_per_item(preds, refs, "rougeL")
    assert per_item[0] > per_item[1] > per_item[2] == per_item[3] == 0.0
    assert sum(per_item) / 4 == pytest.approx(compute_metrics(preds, refs, ["rouge"])["rougeL"])
