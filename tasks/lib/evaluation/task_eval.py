"""Target-task evaluation: greedy answers of a model on held-out rows, scored against the references.

The same rows (the first `evaluation.max_items` of the test split) are scored for the base and the
tuned model; `compare`, `task_markdown` and `write_predictions` put the two side by side.
"""

from __future__ import annotations

import json
import re
import string
from functools import cache
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from tasks.lib.config import ConfigError, EvaluationConfig
from tasks.lib.core import threads
from tasks.lib.dataset.data_formats import read_jsonl
from tasks.lib.modeling.generation import generate, model_device, render_chat

METRIC_MODULE = Path(__file__).resolve().parent / "metrics" / "task_metrics"
LABEL_METRICS = ("accuracy", "exact_match", "f1")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_SURROUNDING = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019"


class PredictionRecord(BaseModel):
    id: str
    prompt: str
    reference: str
    prediction: str
    answer: str = Field("", description="What was scored: the label the prediction names, or the normalised text.")
    correct: bool = Field(description="The scored answer equals the normalised reference.")
    score: float = Field(
        0.0, description="The primary metric on this item alone: 1/0 for label metrics, the F-measure for ROUGE."
    )


class TaskEvalResult(BaseModel):
    metrics: dict[str, float]
    n_items: int
    predictions: list[PredictionRecord]


def normalize_answer(text: str, first_line: bool = True, mode: str = "text") -> str:
    """The answer as it is compared. text: lower-cased, whitespace-collapsed, without surrounding punctuation or
    quotes; sql: lower-cased, whitespace-collapsed, without a trailing ';'; none: only surrounding whitespace removed.

    With `first_line` (classification-style answers) only the first non-empty line counts.
    """
    text = text.strip()
    if first_line:
        text = text.split("\n", 1)[0]
    if mode == "none":
        return text.strip()
    text = re.sub(r"\s+", " ", text.lower())
    if mode == "sql":
        return text.strip().rstrip(";").strip()
    return text.strip(_SURROUNDING)


def extract_answer(text: str, pattern: str) -> str | None:
    """The first group (or the whole match) of the first match of `pattern`, or None."""
    match = re.search(pattern, text)
    if match is None:
        return None
    return match.group(1) if match.groups() else match.group(0)


MAX_LABELS = 20
NEGATION = re.compile(r"(?:\bnot|\bnever|\bno|n't)\s+(?:\w+\s+){0,1}$")


def label_set(references: list[str]) -> list[str] | None:
    """The normalised references when they look like classification labels (few, short), else None."""
    labels = sorted({normalize_answer(reference) for reference in references})
    if len(labels) > MAX_LABELS or any(len(label.split()) > 3 for label in labels):
        return None
    return labels


def parse_answer(prediction: str, labels: list[str] | None) -> str:
    """The one label a free-form answer names ("The sentiment is positive." -> "positive").

    Whole words only; a negated mention ("not positive") does not count; of overlapping mentions ("very
    positive" also contains "positive") the longest wins. An answer naming no label, or several, stays as its
    normalised text and so scores as wrong.
    """
    answer = normalize_answer(prediction)
    if not labels or answer in labels:
        return answer
    mentions = [
        (match.start(), match.end(), label)
        for label in labels
        for match in re.finditer(rf"(?<!\w){re.escape(label)}(?!\w)", answer)
        if not NEGATION.search(answer[: match.start()])
    ]
    outermost = {
        label
        for start, end, label in mentions
        if not any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in mentions)
    }
    return outermost.pop() if len(outermost) == 1 else answer


def _check_rows(rows: list[dict]) -> None:
    errors = []
    for index, row in enumerate(rows):
        messages = row.get("messages")
        where = f"row {index} (id={row.get('id')!r})"
        if not isinstance(messages, list) or len(messages) < 2:
            errors.append(f"{where}: 'messages' must list a prompt and an answer")
        elif messages[-1].get("role") != "assistant":
            errors.append(f"{where}: the last message must be the assistant answer, got {messages[-1].get('role')!r}")
    if errors:
        raise ValueError("bad evaluation rows:\n  " + "\n  ".join(errors))


def render_prompts(tokenizer, rows: list[dict]) -> list[str]:
    """Each row's messages minus the answer, through the chat template, ready for the assistant turn."""
    return [render_chat(tokenizer, row["messages"][:-1]) for row in rows]


def generate_answers(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers (new tokens only, special tokens skipped), one per row, in row order."""
    _check_rows(rows)
    prompts = render_prompts(tokenizer, rows)
    return [g.text for g in generate(model, tokenizer, prompts, max_new_tokens, batch_size, before_batch=threads.fit)]


def choose_labels(model, tokenizer, rows: list[dict], labels: list[str], batch_size: int) -> list[str]:
    """lm-eval's multiple-choice rule for a chat model: each label is put in the assistant's turn after the rendered
    prompt and scored by the summed log-probability of its tokens; the most likely label is the answer.

    When every label is one token (positive/negative, A-D, digits) one pass over each prompt scores them all at its
    last position; otherwise each prompt + label is scored. Sequences are left-padded with their own positions, and
    the LM head runs only at the positions that predict label tokens."""
    _check_rows(rows)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in render_prompts(tokenizer, rows)]
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    single_token = all(len(ids) == 1 for ids in label_ids)
    choices = [None] if single_token else range(len(labels))
    requests = [(row, choice) for row in range(len(rows)) for choice in choices]
    keep = max(map(len, label_ids)) + (0 if single_token else 1)
    scores = torch.full((len(rows), len(labels)), float("-inf"))
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(requests), batch_size):
                batch = requests[start : start + batch_size]
                threads.fit()
                sequences = [prompts[row] + ([] if choice is None else label_ids[choice]) for row, choice in batch]
                width = max(map(len, sequences))
                input_ids = torch.tensor([[pad] * (width - len(seq)) + seq for seq in sequences], device=device)
                mask = torch.tensor([[0] * (width - len(seq)) + [1] * len(seq) for seq in sequences], device=device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep)
                log_probs = torch.log_softmax(output.logits.float(), -1)  # the last `keep` positions
                for k, (row, choice) in enumerate(batch):
                    if choice is None:
                        scores[row] = log_probs[k, -1, [ids[0] for ids in label_ids]].cpu()
                        continue
                    targets = label_ids[choice]
                    first = keep - 1 - len(targets)  # the kept position that predicts the label's first token
                    at = first + torch.arange(len(targets), device=device)
                    picked = log_probs[k, at, torch.tensor(targets, device=device)]
                    scores[row, choice] = picked.sum().item()
    finally:
        model.train(was_training)
    return [labels[int(index)] for index in scores.argmax(dim=1)]


def _choice_labels(references: list[str], eval_cfg: EvaluationConfig) -> list[str]:
    """The label texts as the model should write them: stated in the config, else the distinct references."""
    if eval_cfg.labels:
        return list(eval_cfg.labels)
    if label_set(references) is None:
        raise ConfigError(
            f"evaluation.mode {eval_cfg.mode!r} scores labels, but the test answers are free text (more than "
            f"{MAX_LABELS} distinct or longer than 3 words): use evaluation.mode=generate or state evaluation.labels"
        )
    return sorted(set(references))


@cache
def _metric_module(name: str):
    import evaluate  # heavy import, only when metrics are computed

    if name not in (*LABEL_METRICS, "rouge"):
        raise ValueError(f"unknown metric {name!r}: one of {', '.join((*LABEL_METRICS, 'rouge'))}")
    return evaluate.load(str(METRIC_MODULE), config_name=name, keep_in_memory=True)


def compute_metrics(
    predictions: list[str],
    references: list[str],
    metric_names: list[str],
    normalization: str = "text",
    first_line: bool = True,
) -> dict[str, float]:
    """Scores in [0, 1]; label metrics on normalised answers, rouge on the stripped texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    results: dict[str, float] = {}
    for name in metric_names:
        if name in LABEL_METRICS:
            preds = [normalize_answer(p, first_line, normalization) for p in predictions]
            refs = [normalize_answer(r, first_line, normalization) for r in references]
        else:
            preds = [p.strip() for p in predictions]
            refs = [r.strip() for r in references]
        scores = _metric_module(name).compute(predictions=preds, references=refs)
        results.update({key: float(value) for key, value in scores.items()})
    return results


def rouge_per_item(predictions: list[str], references: list[str], key: str) -> list[float]:
    """Each item's ROUGE F-measure, as the `rouge` metric module computes it before averaging (its mean)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([key], use_stemmer=False)
    return [
        scorer.score(reference.strip(), prediction.strip())[key].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]


def _prompt_text(row: dict) -> str:
    return str(row["messages"][-2]["content"])


def derived_max_new_tokens(tokenizer, references: list[str], margin: int = 8) -> int:
    """The 95th percentile of the references' token lengths plus a margin (room for a chatty preamble and the
    end-of-turn token)."""
    lengths = sorted(len(tokenizer(reference, add_special_tokens=False)["input_ids"]) for reference in references)
    return lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))] + margin


def score_answers(
    predictions: list[str], references: list[str], eval_cfg: EvaluationConfig
) -> tuple[list[str], list[str], list[str] | None]:
    """(the answers scored, the references scored, the label set or None): the extraction rule applied to both
    sides, then a label parsed from each answer (classification) or the whole answer normalised (free text)."""
    if eval_cfg.extract_pattern:
        pattern = eval_cfg.extract_pattern
        predictions = [extract_answer(prediction, pattern) or "" for prediction in predictions]
        references = [extract_answer(reference, pattern) or reference for reference in references]
    if eval_cfg.labels:
        labels = sorted({normalize_answer(label) for label in eval_cfg.labels})
    else:
        labels = label_set(references) if eval_cfg.answer_match == "label" else None
    if labels is not None:
        return [parse_answer(prediction, labels) for prediction in predictions], references, labels
    mode = eval_cfg.normalization
    return [normalize_answer(prediction, False, mode) for prediction in predictions], references, None


def resolved_mode(eval_cfg: EvaluationConfig, references: list[str]) -> str:
    """`evaluation.mode`, with auto made concrete: both for classification, generate for free text."""
    if eval_cfg.mode != "auto":
        return eval_cfg.mode
    classification = bool(eval_cfg.labels) or (eval_cfg.answer_match == "label" and label_set(references) is not None)
    return "both" if classification else "generate"


def evaluate_task(model, tokenizer, rows: list[dict], eval_cfg: EvaluationConfig) -> TaskEvalResult:
    """Answers and scores the first `eval_cfg.max_items` rows, the way `eval_cfg.mode` says."""
    selected = rows[: eval_cfg.max_items] if eval_cfg.max_items else list(rows)
    if not selected:
        raise ValueError("no rows to evaluate")
    _check_rows(selected)
    references = [str(row["messages"][-1]["content"]) for row in selected]
    mode = resolved_mode(eval_cfg, references)
    choices = None
    if mode != "generate":
        labels = _choice_labels(references, eval_cfg)
        choices = choose_labels(model, tokenizer, selected, labels, eval_cfg.batch_size)
    if mode == "choices":
        predictions = choices
    else:
        budget = eval_cfg.max_new_tokens or derived_max_new_tokens(tokenizer, references)
        predictions = generate_answers(model, tokenizer, selected, budget, eval_cfg.batch_size)
    answers, scored_references, labels = score_answers(predictions, references, eval_cfg)
    normalization = eval_cfg.normalization
    records = [
        PredictionRecord(
            id=str(row.get("id", index)),
            prompt=_prompt_text(row),
            reference=reference,
            prediction=prediction,
            answer=answer,
            correct=answer == normalize_answer(scored, first_line=labels is not None, mode=normalization),
        )
        for index, (row, reference, prediction, answer, scored) in enumerate(
            zip(selected, references, predictions, answers, scored_references, strict=True)
        )
    ]
    if eval_cfg.primary_metric in ROUGE_KEYS:
        graded = rouge_per_item(answers, scored_references, eval_cfg.primary_metric)
        records = [record.model_copy(update={"score": value}) for record, value in zip(records, graded, strict=True)]
    else:
        records = [record.model_copy(update={"score": float(record.correct)}) for record in records]
    metrics = compute_metrics(answers, scored_references, list(eval_cfg.metrics), normalization, labels is not None)
    if labels is not None and mode != "choices":
        # A chatty answer that names no label, or several, scores as wrong: say how often that happened.
        metrics["unlabelled_answers"] = sum(answer not in labels for answer in answers) / len(answers)
    if mode == "both":
        chosen, _, _ = score_answers(choices, references, eval_cfg)
        label_scores = compute_metrics(chosen, scored_references, list(eval_cfg.metrics), normalization, True)
        metrics.update({f"choices_{name}": value for name, value in label_scores.items()})
    return TaskEvalResult(metrics=metrics, n_items=len(selected), predictions=records)


def compare(base: TaskEvalResult, tuned: TaskEvalResult) -> dict[str, dict[str, float]]:
    """{metric: {base, tuned, delta}} for the metrics both results have."""
    if base.n_items != tuned.n_items:
        raise ValueError(f"base scored {base.n_items} items but tuned {tuned.n_items}: not comparable")
    return {
        name: {
            "base": base.metrics[name],
            "tuned": tuned.metrics[name],
            "delta": tuned.metrics[name] - base.metrics[name],
        }
        for name in base.metrics
        if name in tuned.metrics
    }


def task_markdown(base: TaskEvalResult, tuned: TaskEvalResult, primary_metric: str) -> str:
    """A markdown table base | tuned | delta per metric; the primary metric in bold."""
    lines = [
        f"Target task, {base.n_items} held-out items (greedy decoding):",
        "",
        "| metric | base | tuned | delta |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in compare(base, tuned).items():
        label = f"**{name}** (primary)" if name == primary_metric else name
        lines.append(f"| {label} | {row['base']:.4f} | {row['tuned']:.4f} | {row['delta']:+.4f} |")
    if f"choices_{primary_metric}" in base.metrics:
        lines += [
            "",
            f"**{primary_metric}** of the generated answers decides: it is what `qlora chat` and the served model "
            f"return. `choices_{primary_metric}` scores the label each model finds most likely (lm-eval's rule), a "
            "baseline fair to a chatty base that names no label: a tuned gain far above its choices gain is partly "
            "the answer's format.",
        ]
    return "\n".join(lines) + "\n"


def write_predictions(base: TaskEvalResult, tuned: TaskEvalResult, path: Path) -> Path:
    """Both models' answers side by side, one JSON object per item."""
    if [p.id for p in base.predictions] != [p.id for p in tuned.predictions]:
        raise ValueError("base and tuned predictions are not for the same items")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for b, t in zip(base.predictions, tuned.predictions, strict=True):
            record: dict[str, Any] = {
                "id": b.id,
                "prompt": b.prompt,
                "reference": b.reference,
                "base_prediction": b.prediction,
                "tuned_prediction": t.prediction,
                "base_answer": b.answer,
                "tuned_answer": t.answer,
                "base_correct": b.correct,
                "tuned_correct": t.correct,
                "base_score": b.score,
                "tuned_score": t.score,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def load_split(processed_dir: Path, split: str) -> list[dict]:
    """Rows of `<processed_dir>/<split>.jsonl` (the data-prep output of one data set)."""
    path = Path(processed_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the data preparation first")
    rows, errors = [], []
    for number, row in read_jsonl(path):
        messages = row.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            errors.append(f"{path} line {number}: 'messages' must end with the assistant answer")
            continue
        rows.append(row)
    if errors:
        raise ValueError("bad processed rows:\n  " + "\n  ".join(errors[:20]))
    return rows
