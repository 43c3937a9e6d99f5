"""Raw benchmark files (DVC `data/raw/...`) -> one uniform JSONL per benchmark for the lm-eval task YAMLs.

Shapes written (one JSON object per line, file order = source order, so "the first N items" is fixed):
- multiple choice (hellaswag, arc_easy, arc_challenge, piqa, boolq, openbookqa, copa, truthfulqa_mc1):
  {"id", "query", "choices": [str], "label": int}
- mmlu: the same plus "subject"; the 57 subjects interleaved (item i of every subject, then item i + 1), so the
  first N items cover every subject rather than the alphabetically first few
- winogrande (partial scoring, as lm-eval): {"id", "contexts": [str, str], "continuation", "label": int}
- lambada: {"id", "context", "continuation"} (continuation without its leading space)
- wikitext: {"id", "title", "page"}: one Wikipedia article per row, lines joined with "\\n", split at the
  top-level " = Title = " headings like lm-eval's `wikitext_document_level` data set.

Text is kept as the sources give it; the task YAMLs apply lm-eval's own prompts and detokenizer.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

from tasks.lib.config.benchmark_names import DEFAULT_BENCHMARKS, OUTPUT_FILES, RAW_FOLDERS
from tasks.lib.core.publish import publish_dir
from tasks.lib.dataset.data_formats import DataError, load_located_rows, location_word, raise_collected, read_jsonl

_TOP_HEADING = re.compile(r"^ = [^=].* = $")


class BenchmarkDataError(DataError):
    """A raw benchmark file is missing or malformed; the message names the file and line."""


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise BenchmarkDataError(f"missing raw benchmark file: {path}")
    try:
        return read_jsonl(path)
    except DataError as error:
        raise BenchmarkDataError(str(error)) from None


def _require(row: dict, keys: tuple[str, ...], path: Path, number: int) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise BenchmarkDataError(f"{path}:{number}: missing field(s) {missing}")


def convert_hellaswag(raw_dir: Path) -> list[dict]:
    """llama.cpp 6-lines-per-item text: context, gold index, four endings."""
    path = raw_dir / "hellaswag" / "hellaswag_val_full.txt"
    if not path.is_file():
        raise BenchmarkDataError(f"missing raw benchmark file: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 6:
        raise BenchmarkDataError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    rows = []
    for start in range(0, len(lines), 6):
        label = lines[start + 1].strip()
        if label not in {"0", "1", "2", "3"}:
            raise BenchmarkDataError(f"{path}:{start + 2}: gold label {label!r} is not 0-3")
        rows.append(
            {
                "id": f"hellaswag-{start // 6}",
                "query": lines[start].strip(),
                "choices": [ending.strip() for ending in lines[start + 2 : start + 6]],
                "label": int(label),
            }
        )
    return rows


def _convert_arc(path: Path, prefix: str) -> list[dict]:
    rows = []
    for number, row in _read_jsonl(path):
        _require(row, ("question", "choices", "answerKey"), path, number)
        labels, texts = row["choices"].get("label", []), row["choices"].get("text", [])
        if row["answerKey"] not in labels or len(labels) != len(texts):
            raise BenchmarkDataError(f"{path}:{number}: answerKey {row['answerKey']!r} not among {labels}")
        rows.append(
            {
                "id": str(row.get("id", f"{prefix}-{number}")),
                "query": row["question"],
                "choices": list(texts),
                "label": labels.index(row["answerKey"]),
            }
        )
    return rows


def convert_arc_easy(raw_dir: Path) -> list[dict]:
    return _convert_arc(raw_dir / "arc_easy" / "ARC-Easy-test.jsonl", "arc_easy")


def convert_arc_challenge(raw_dir: Path) -> list[dict]:
    return _convert_arc(raw_dir / "arc_challenge" / "ARC-Challenge-test.jsonl", "arc_challenge")


def convert_piqa(raw_dir: Path) -> list[dict]:
    """valid.jsonl (goal, sol1, sol2) aligned line by line with valid-labels.lst."""
    path, labels_path = raw_dir / "piqa" / "valid.jsonl", raw_dir / "piqa" / "valid-labels.lst"
    if not labels_path.is_file():
        raise BenchmarkDataError(f"missing raw benchmark file: {labels_path}")
    labels = labels_path.read_text(encoding="utf-8").split()
    rows = []
    for index, (number, row) in enumerate(_read_jsonl(path)):
        _require(row, ("goal", "sol1", "sol2"), path, number)
        if index >= len(labels) or labels[index] not in {"0", "1"}:
            raise BenchmarkDataError(f"{labels_path}:{index + 1}: no 0/1 label for {path}:{number}")
        rows.append(
            {
                "id": f"piqa-{index}",
                "query": row["goal"],
                "choices": [row["sol1"], row["sol2"]],
                "label": int(labels[index]),
            }
        )
    if len(rows) != len(labels):
        raise BenchmarkDataError(f"{labels_path}: {len(labels)} labels for {len(rows)} items in {path}")
    return rows


def convert_lambada(raw_dir: Path) -> list[dict]:
    path = raw_dir / "lambada_openai" / "lambada_openai.jsonl"
    rows = []
    for index, (number, row) in enumerate(_read_jsonl(path)):
        _require(row, ("context", "continuation"), path, number)
        rows.append(
            {
                "id": f"lambada-{index}",
                "context": row["context"].rstrip(" "),
                "continuation": row["continuation"].strip(),
            }
        )
    return rows


def convert_wikitext(raw_dir: Path) -> list[dict]:
    """CRLF lines grouped into articles at each top-level " = Title = " heading (sub-headings use "= =")."""
    path = raw_dir / "wikitext2_raw" / "wiki.test.raw"
    if not path.is_file():
        raise BenchmarkDataError(f"missing raw benchmark file: {path}")
    with path.open(encoding="utf-8", newline="") as handle:
        lines = handle.read().replace("\r\n", "\n").split("\n")
    articles: list[list[str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if _TOP_HEADING.match(line):
            articles.append([])
        elif not articles:
            raise BenchmarkDataError(f"{path}:{number}: text before the first ' = Title = ' heading")
        articles[-1].append(line)
    return [
        {"id": f"wikitext-{index}", "title": article[0].strip(" ="), "page": "\n".join(article) + "\n"}
        for index, article in enumerate(articles)
    ]


def _mosaic_choice_rows(path: Path) -> list[tuple[int, dict]]:
    """MosaicML ICL multiple-choice rows ({"query", "choices", "gold"}), checked."""
    rows = []
    for number, row in _read_jsonl(path):
        _require(row, ("query", "choices", "gold"), path, number)
        if not isinstance(row["choices"], list) or not 0 <= int(row["gold"]) < len(row["choices"]):
            raise BenchmarkDataError(f"{path}:{number}: gold {row['gold']!r} is not an index into choices")
        rows.append((number, row))
    return rows


def convert_winogrande(raw_dir: Path) -> list[dict]:
    """Two contexts (the sentence up to the blank, each option filled in) and the shared continuation."""
    path = raw_dir / "winogrande" / "winogrande.jsonl"
    rows = []
    for index, (number, row) in enumerate(_read_jsonl(path)):
        _require(row, ("context_options", "continuation", "gold"), path, number)
        if len(row["context_options"]) != 2 or row["gold"] not in (0, 1):
            raise BenchmarkDataError(f"{path}:{number}: expected 2 context_options and gold 0 or 1")
        rows.append(
            {
                "id": f"winogrande-{index}",
                "contexts": list(row["context_options"]),
                "continuation": row["continuation"].strip(),
                "label": int(row["gold"]),
            }
        )
    return rows


def convert_boolq(raw_dir: Path) -> list[dict]:
    """lm-eval's prompt is "<passage>\nQuestion: <question>?\nAnswer:"; the export prefixes "Passage: "."""
    path = raw_dir / "boolq" / "boolq.jsonl"
    return [
        {
            "id": f"boolq-{index}",
            "query": row["query"].removeprefix("Passage: "),
            "choices": list(row["choices"]),
            "label": int(row["gold"]),
        }
        for index, (_, row) in enumerate(_mosaic_choice_rows(path))
    ]


def convert_openbookqa(raw_dir: Path) -> list[dict]:
    path = raw_dir / "openbookqa" / "openbook_qa.jsonl"
    return [
        {"id": f"openbookqa-{index}", "query": row["query"], "choices": list(row["choices"]), "label": int(row["gold"])}
        for index, (_, row) in enumerate(_mosaic_choice_rows(path))
    ]


def convert_copa(raw_dir: Path) -> list[dict]:
    """lm-eval's prompt is the premise without its period, then " because" / " therefore"; the export adds a
    comma before the connector, which is dropped here."""
    path = raw_dir / "copa" / "copa.jsonl"
    return [
        {
            "id": f"copa-{index}",
            "query": re.sub(r",\s*(because|therefore)$", r" \1", row["query"].strip()),
            "choices": [choice[:1].lower() + choice[1:] for choice in row["choices"]],
            "label": int(row["gold"]),
        }
        for index, (_, row) in enumerate(_mosaic_choice_rows(path))
    ]


def convert_mmlu(raw_dir: Path) -> list[dict]:
    """One CSV per subject (question, choice0-3, answer 0-3), interleaved across subjects."""
    folder = raw_dir / "mmlu" / "test"
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise BenchmarkDataError(f"missing raw benchmark files: {folder}/*_test.csv")
    subjects: list[list[dict]] = []
    for path in files:
        subject = path.name.removesuffix("_test.csv")
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            items = []
            for number, row in enumerate(reader, start=2):
                if any(row.get(key) is None for key in ("question", "choice0", "choice3", "answer")) or row[
                    "answer"
                ] not in {"0", "1", "2", "3"}:
                    raise BenchmarkDataError(f"{path}:{number}: expected question, choice0-3 and answer 0-3")
                items.append(
                    {
                        "id": f"mmlu-{subject}-{len(items)}",
                        "subject": subject,
                        "query": row["question"],
                        "choices": [row[f"choice{i}"] for i in range(4)],
                        "label": int(row["answer"]),
                    }
                )
        subjects.append(items)
    return [item for round_ in itertools.zip_longest(*subjects) for item in round_ if item is not None]


def convert_truthfulqa_mc1(raw_dir: Path) -> list[dict]:
    """mc_task.json: MC1 targets {answer: 1 for the one true answer, else 0}; lm-eval puts the true one first."""
    path = raw_dir / "truthfulqa" / "mc_task.json"
    if not path.is_file():
        raise BenchmarkDataError(f"missing raw benchmark file: {path}")
    rows = []
    for index, item in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        targets = item.get("mc1_targets", {})
        true = [answer for answer, label in targets.items() if label == 1]
        if "question" not in item or len(true) != 1:
            raise BenchmarkDataError(f"{path}: item {index}: expected a question and exactly one true mc1 target")
        choices = true + [answer for answer, label in targets.items() if label != 1]
        rows.append({"id": f"truthfulqa_mc1-{index}", "query": item["question"], "choices": choices, "label": 0})
    return rows


# A user's benchmark (forgetting.custom): the field names each kind accepts, first match wins.
CUSTOM_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "multiple_choice": {
        "query": ("query", "question", "prompt", "context"),
        "choices": ("choices", "options"),
        "label": ("label", "gold", "answer"),
    },
    "continuation": {"context": ("context", "prompt"), "continuation": ("continuation", "target", "completion")},
    "perplexity": {"page": ("text", "page", "document")},
}


def convert_custom(name: str, path: str, kind: str) -> list[dict]:
    """A user's benchmark file (JSONL, JSON, Parquet) -> the uniform rows its task template reads.

    multiple_choice: a query, a list of choices and the right one (its index, or its text); continuation: a
    context and the continuation to score after a space; perplexity: a text. Every bad row is named.
    """
    located = _located_rows(path)
    fields, rows, errors = CUSTOM_FIELDS[kind], [], []
    for number, row in located:
        where = f"{path} {location_word(path)} {number}"
        found = {key: next((row[alias] for alias in aliases if alias in row), None) for key, aliases in fields.items()}
        missing = [" or ".join(fields[key]) for key, value in found.items() if value is None]
        if missing:
            errors.append(f"{where}: missing {', '.join(missing)}")
            continue
        if kind == "multiple_choice":
            choices, label = found["choices"], found["label"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                errors.append(f"{where}: choices must be a list of at least 2 strings")
                continue
            if isinstance(label, str) and label in choices:
                label = choices.index(label)
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
                errors.append(f"{where}: the answer {label!r} is neither an index into choices nor one of them")
                continue
            found = {"query": str(found["query"]), "choices": choices, "label": label}
        elif kind == "continuation":
            found = {"context": str(found["context"]).rstrip(" "), "continuation": str(found["continuation"]).strip()}
            if not found["continuation"]:
                errors.append(f"{where}: empty continuation")
                continue
        elif not str(found["page"]).strip():
            errors.append(f"{where}: empty text")
            continue
        rows.append({"id": f"{name}-{len(rows)}", **found})
    raise_collected(errors, f"{path}: bad benchmark rows for {name!r}")
    return rows


def _located_rows(path: str) -> list[tuple[int, dict]]:
    try:
        return load_located_rows(path)
    except DataError as error:
        raise BenchmarkDataError(str(error)) from None


CONVERTERS: dict[str, Callable[[Path], list[dict]]] = {
    "hellaswag": convert_hellaswag,
    "arc_easy": convert_arc_easy,
    "arc_challenge": convert_arc_challenge,
    "piqa": convert_piqa,
    "lambada": convert_lambada,
    "wikitext": convert_wikitext,
    "winogrande": convert_winogrande,
    "boolq": convert_boolq,
    "openbookqa": convert_openbookqa,
    "copa": convert_copa,
    "mmlu": convert_mmlu,
    "truthfulqa_mc1": convert_truthfulqa_mc1,
}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_benchmarks(raw_dir: Path, out_dir: Path, names: list[str] | None = None) -> dict:
    """Convert the raw benchmark data into `out_dir/<name>.jsonl`; returns {name: {"file", "items"}}.

    names=None converts the five default benchmarks plus every other one whose raw folder exists.
    All problems are collected and raised together; out_dir is replaced atomically (temp folder, rename).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if names is None:
        others = [name for name in CONVERTERS if name not in DEFAULT_BENCHMARKS]
        names = DEFAULT_BENCHMARKS + [name for name in others if (raw_dir / RAW_FOLDERS[name]).is_dir()]
    unknown = [name for name in names if name not in CONVERTERS]
    if unknown:
        raise BenchmarkDataError(f"unknown benchmark(s) {unknown}; known: {sorted(CONVERTERS)}")

    converted, errors = {}, []
    for name in names:
        try:
            converted[name] = CONVERTERS[name](raw_dir)
        except BenchmarkDataError as error:
            errors.append(str(error))
    if errors:
        raise BenchmarkDataError("cannot prepare benchmarks:\n  " + "\n  ".join(errors))

    summary = {name: {"file": OUTPUT_FILES[name], "items": len(rows)} for name, rows in converted.items()}

    def fill(folder: Path) -> None:
        for name, rows in converted.items():
            _write_jsonl(folder / OUTPUT_FILES[name], rows)
        (folder / "manifest.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    publish_dir(out_dir, fill)
    return summary
