"""Raw benchmark files (DVC `data/raw/...`) -> one uniform JSONL per benchmark for the lm-eval task YAMLs.

Shapes written (one JSON object per line, file order = source order, so "the first N items" is fixed):
- multiple choice (hellaswag, arc_easy, arc_challenge, piqa): {"id", "query", "choices": [str], "label": int}
- lambada: {"id", "context", "continuation"} (continuation without its leading space)
- wikitext: {"id", "title", "page"}: one Wikipedia article per row, lines joined with "\\n", split at the
  top-level " = Title = " headings like lm-eval's `wikitext_document_level` data set.

Text is kept as the sources give it; the task YAMLs apply lm-eval's own prompts and detokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from tasks.lib.data_formats import DataError, read_jsonl
from tasks.lib.errors import UserError
from tasks.lib.publish import publish_dir

# Benchmark name -> output file name inside out_dir.
OUTPUT_FILES = {
    "hellaswag": "hellaswag.jsonl",
    "arc_easy": "arc_easy.jsonl",
    "arc_challenge": "arc_challenge.jsonl",
    "piqa": "piqa.jsonl",
    "lambada": "lambada.jsonl",
    "wikitext": "wikitext.jsonl",
}
DEFAULT_BENCHMARKS = ["hellaswag", "arc_easy", "piqa", "lambada", "wikitext"]

_TOP_HEADING = re.compile(r"^ = [^=].* = $")


class BenchmarkDataError(UserError, ValueError):
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


CONVERTERS: dict[str, Callable[[Path], list[dict]]] = {
    "hellaswag": convert_hellaswag,
    "arc_easy": convert_arc_easy,
    "arc_challenge": convert_arc_challenge,
    "piqa": convert_piqa,
    "lambada": convert_lambada,
    "wikitext": convert_wikitext,
}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_benchmarks(raw_dir: Path, out_dir: Path, names: list[str] | None = None) -> dict:
    """Convert the raw benchmark data into `out_dir/<name>.jsonl`; returns {name: {"file", "items"}}.

    names=None converts the five default benchmarks plus arc_challenge when its raw folder exists.
    All problems are collected and raised together; out_dir is replaced atomically (temp folder, rename).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if names is None:
        names = DEFAULT_BENCHMARKS + (["arc_challenge"] if (raw_dir / "arc_challenge").is_dir() else [])
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
