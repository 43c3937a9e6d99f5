"""Raw rows -> validated chat messages -> tokenised, loss-masked train/validation/test JSONL.

Order of work: load, normalise every row (all errors raised together), deduplicate, rank rows by a
seeded content hash, keep `max_rows`, cut the ranking into test / validation / train, tokenise.

Split choice: each row's rank is sha256(seed, the raw row), so the same seed and data give byte-identical
files whatever the file order, a different seed gives a different split, a new prompt template or value map
keeps the same items in each split (champion and challenger are scored on the same test items), fractions
are exact (counts are rounded), and identical rows always share a split. A split with its own source
(`data.validation_path`, `data.test_path`) takes no rows from the main source.

Decontamination: a training row whose input (case- and whitespace-normalised) equals a validation or test
item's is dropped; held-out inputs found verbatim inside a training input are counted. Both go to the stats.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from tasks.lib.config import DataConfig, RunConfig
from tasks.lib.core.hashing import file_md5
from tasks.lib.core.publish import publish_dir, publish_text
from tasks.lib.dataset.data_formats import (
    DataError,
    is_dataset_source,
    is_hub_id,
    resolved_hub_revision,
)
from tasks.lib.dataset.sources import SourceRow, normalise_source, replay_config
from tasks.lib.dataset.tokenization import (
    IGNORE_INDEX,
    SPLITS,
    length_summary,
    tokenize_conversation,
    tokenizer_fingerprint,
)

PREP_VERSION = 3  # bump when the output of this module changes for the same inputs
MAX_LABEL_CLASSES = 20


def input_fingerprint(config: RunConfig, tokenizer) -> str:
    """Everything the prepared files depend on; equal fingerprints mean identical outputs."""
    data = config.data

    def source(path: str | None, hub_split: str, section: DataConfig = data) -> str | None:
        if path is None:
            return None
        settings = f"{section.hub_config}:{hub_split}"
        if is_hub_id(path):
            return f"hub:{path}:{settings}@{resolved_hub_revision(path, section.hub_revision)}"
        if Path(path).is_dir():
            return f"folder:{file_md5(Path(path))}:{settings}"
        return file_md5(Path(path)) if Path(path).is_file() else f"missing:{path}"

    payload = json.dumps(
        {
            "version": PREP_VERSION,
            "source": source(data.path, data.hub_split),
            "validation_source": source(data.validation_path, data.validation_hub_split),
            "test_source": source(data.test_path, data.test_hub_split),
            "replay_source": (
                source(data.replay.path, data.replay.hub_split, replay_config(data)) if data.replay else None
            ),
            "data": config.portable_dump()["data"],
            "seed": config.seed,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def is_up_to_date(out_dir: Path, fingerprint: str) -> bool:
    """True when out_dir holds complete prepared splits made from inputs with this fingerprint."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("fingerprint") == fingerprint and all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS)


# ---------------------------------------------------------------- the whole preparation


def _rank_key(seed: int, split_key: str) -> str:
    return hashlib.sha256(f"{seed}\n{split_key}".encode()).hexdigest()


def _canonical(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def _split_counts(total: int, data: DataConfig) -> dict[str, int]:
    """Rows cut from the main source; a held-out split with its own source takes none."""
    test = 0 if data.test_path else round(total * data.split.test)
    validation = 0 if data.validation_path else round(total * data.split.validation)
    if total >= 3:  # every split gets a row when there are enough
        test = test if data.test_path else max(test, 1)
        validation = validation if data.validation_path else max(validation, 1)
    return {"test": test, "validation": validation, "train": max(total - test - validation, 0)}


def _cut(ranked: list[tuple[str, Any]], counts: dict[str, int]) -> dict[str, list[Any]]:
    """Test first, validation next, train the rest; a cut never separates rows with equal keys."""
    parts, start = {}, 0
    for name in ("test", "validation"):
        end = min(start + counts[name], len(ranked))
        while 0 < end < len(ranked) and ranked[end][0] == ranked[end - 1][0]:
            end += 1
        parts[name], start = [item for _, item in ranked[start:end]], end
    parts["train"] = [item for _, item in ranked[start:]]
    return parts


def _write_files(out_dir: Path, files: dict[str, str], replace: bool) -> None:
    def fill(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8", newline="\n")

    publish_dir(out_dir, fill, replace=replace)


def _write_json(path: Path, value: Any) -> None:
    publish_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _add_replay(parts: dict[str, list[SourceRow]], data: DataConfig, seed: int) -> int:
    """Append replay rows to the training split so they make up `data.replay.fraction` of it; held-out inputs
    are never replayed. Returns how many were added (fewer when the replay source is small)."""
    replay = data.replay
    rows, _ = normalise_source(replay.path, replay.hub_split, replay_config(data))
    held_out = {row.prompt for name in ("validation", "test") for row in parts[name]}
    rows = [row for row in _deduplicate(rows) if row.prompt not in held_out]
    wanted = round(len(parts["train"]) * replay.fraction / (1.0 - replay.fraction))
    chosen = [row._replace(id=f"replay-{row.id}") for _, row in _ranked(rows, seed)[:wanted]]
    parts["train"] = [row for _, row in _ranked(parts["train"] + chosen, seed)]
    return len(chosen)


def _deduplicate(rows: list[SourceRow]) -> list[SourceRow]:
    seen, unique = set(), []
    for row in rows:
        key = _canonical(row.messages)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _ranked(rows: list[SourceRow], seed: int) -> list[tuple[str, SourceRow]]:
    return sorted(((_rank_key(seed, row.split_key), row) for row in rows), key=lambda item: item[0])


def _decontaminate(parts: dict[str, list[SourceRow]]) -> dict[str, int]:
    """Drop training rows whose input equals a validation/test item's; count held-out inputs found inside
    training inputs (a test sentence quoted in a longer training phrase)."""
    held_out = {row.prompt for name in ("validation", "test") for row in parts[name]}
    kept = [row for row in parts["train"] if row.prompt not in held_out]
    removed = len(parts["train"]) - len(kept)
    parts["train"] = kept
    corpus = "\x00".join(row.prompt for row in kept)
    return {
        "train_rows_removed_as_held_out": removed,
        **{
            f"{name}_items_inside_train_rows": sum(row.prompt in corpus for row in parts[name])
            for name in ("validation", "test")
        },
    }


TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<|eot_id|>", "<|start_header_id|>", "</s>")
INSTRUCTION_WRAPPERS = ("### Instruction:", "### Response:", "Below is an instruction that describes a task")
SHARED_EDGE_FRACTION = 0.8


def artefact_warnings(rows: list[SourceRow], tokenizer, free_text: bool) -> list[str]:
    """Artefacts that silently poison training: a marker most free-text answers end (or start) with, chat-template
    tokens inside the text, prompts already wrapped in an instruction template."""
    warnings = []
    answers = [row.messages[-1]["content"] for row in rows]
    texts = [message["content"] for row in rows for message in row.messages]
    if free_text and answers:
        for edge, pick in (("end", -1), ("start", 0)):
            words = Counter(answer.split()[pick] for answer in answers if answer.split())
            word, count = words.most_common(1)[0] if words else ("", 0)
            if len(word) >= 3 and count >= SHARED_EDGE_FRACTION * len(answers):
                warnings.append(
                    f"{count} of {len(answers)} training answers {edge} with {word!r}: a leftover marker? The model "
                    "will learn to write it"
                )
    markers = set(TEMPLATE_MARKERS) | {token for token in tokenizer.all_special_tokens if len(token) > 3}
    inside = Counter(marker for text in texts for marker in markers if marker in text)
    for marker, count in sorted(inside.items()):
        warnings.append(f"{count} training texts contain the template token {marker!r}: already rendered once?")
    wrapped = sum(any(wrapper in row.messages[-2]["content"] for wrapper in INSTRUCTION_WRAPPERS) for row in rows)
    if wrapped:
        warnings.append(
            f"{wrapped} training prompts already contain an instruction template (e.g. '### Instruction:'); the chat "
            "template wraps them again"
        )
    return warnings


class _Selection(NamedTuple):
    """The rows each split gets, and what choosing them dropped."""

    parts: dict[str, list[SourceRow]]
    fmt: str
    rows_read: int
    duplicates: int
    rows_selected: int
    rejects: list[dict]
    decontamination: dict[str, int]
    replayed: int


def _select_rows(config: RunConfig) -> _Selection:
    """Read and normalise every source, deduplicate, rank by the seeded hash, cut the splits, decontaminate, mix
    in replay rows."""
    data, rejects = config.data, []
    rows, fmt = normalise_source(data.path, data.hub_split, data, rejects=rejects)
    rows_read = len(rows)
    if data.deduplicate:
        rows = _deduplicate(rows)
    ranked = _ranked(rows, config.seed)
    ranked = ranked[: data.max_rows] if data.max_rows else ranked
    parts = _cut(ranked, _split_counts(len(ranked), data))
    for name in ("validation", "test"):
        source = getattr(data, f"{name}_path")
        if source:
            held_out, _ = normalise_source(source, getattr(data, f"{name}_hub_split"), data, fmt, rejects)
            held_out = _deduplicate(held_out) if data.deduplicate else held_out
            parts[name] = [row for _, row in _ranked(held_out, config.seed)]
    decontamination = _decontaminate(parts)
    replayed = _add_replay(parts, data, config.seed) if data.replay else 0
    return _Selection(parts, fmt, rows_read, rows_read - len(rows), len(ranked), rejects, decontamination, replayed)


def _tokenise_splits(parts: dict[str, list[SourceRow]], tokenizer, data: DataConfig) -> tuple[dict, dict, dict]:
    """Each split as JSONL lines of messages, input ids and masked labels; the token statistics; the answers."""
    files: dict[str, str] = {}
    answers: dict[str, Counter] = {}
    stats: dict[str, Any] = {"dropped_overlong": 0, "truncated": 0, "rows": {}, "length_tokens": {}}
    stats.update({"tokens": {}, "answer_tokens": {}, "max_tokens": {}})
    for split in SPLITS:
        lines, answers[split], lengths = [], Counter(), []
        tokens = answer_tokens = longest = 0
        for row_id, _, messages, _ in parts[split]:
            encoded = tokenize_conversation(messages, tokenizer, data.max_length, data.overlong)
            if encoded is None:
                stats["dropped_overlong"] += 1
                continue
            stats["truncated"] += encoded["truncated"]
            row = {"id": row_id, "messages": messages, "input_ids": encoded["input_ids"], "labels": encoded["labels"]}
            lines.append(json.dumps(row, ensure_ascii=False))
            answers[split][messages[-1]["content"]] += 1
            length = len(encoded["input_ids"])
            lengths.append(length)
            tokens += length
            answer_tokens += sum(label != IGNORE_INDEX for label in encoded["labels"])
            longest = max(longest, length)
        files[f"{split}.jsonl"] = "".join(line + "\n" for line in lines)
        stats["rows"][split] = len(lines)
        stats["length_tokens"][split] = length_summary(lengths)
        stats["tokens"][split], stats["answer_tokens"][split], stats["max_tokens"][split] = (
            tokens,
            answer_tokens,
            longest,
        )
    return files, stats, answers


def _refuse_empty_splits(stats: dict[str, Any], selection: _Selection, data: DataConfig) -> None:
    """Every split must carry the run: refused now, not after training."""
    for split in SPLITS:
        if stats["rows"][split] == 0:
            source = getattr(data, f"{split}_path", None) or data.path
            raise DataError(
                f"{source}: no {split} rows left after deduplication ({selection.duplicates} duplicates removed), "
                f"splitting and dropping overlong rows ({stats['dropped_overlong']} over "
                f"data.max_length={data.max_length}); "
                f"{'add rows or raise data.split.' + split if split != 'train' else 'add rows'}"
            )


def prepare_dataset(
    config: RunConfig, tokenizer, out_dir: Path, stats_path: Path | None = None, replace: bool = True
) -> dict[str, Any]:
    """Write train/validation/test.jsonl, manifest.json and stats.json to out_dir (atomically), stats also to
    stats_path (the file DVC tracks as a metric). replace=False keeps a folder another process published first."""
    data, out_dir = config.data, Path(out_dir)
    fingerprint = input_fingerprint(config, tokenizer)
    selection = _select_rows(config)
    files, token_stats, answers = _tokenise_splits(selection.parts, tokenizer, data)
    _refuse_empty_splits(token_stats, selection, data)

    distinct = set().union(*answers.values())
    # The paths as the config wrote them (relative to the project): these files are DVC outputs, the same on
    # every machine.
    shown = config.portable_dump()["data"]
    stats = {
        "source": shown["path"],
        "format": selection.fmt,
        "fingerprint": fingerprint,
        "rows_read": selection.rows_read,
        "duplicates_removed": selection.duplicates,
        "rows_selected": selection.rows_selected,
        "invalid_rows_dropped": len(selection.rejects),
        "rejects_file": "rejects.jsonl" if selection.rejects else None,
        "sources": {
            "train": shown["path"],
            "validation": shown["validation_path"] or f"{shown['path']} ({data.split.validation:g} of it)",
            "test": shown["test_path"] or f"{shown['path']} ({data.split.test:g} of it)",
        },
        "decontamination": selection.decontamination,
        "replay_rows": selection.replayed,
        **token_stats,
        "warnings": artefact_warnings(selection.parts["train"], tokenizer, free_text=len(distinct) > MAX_LABEL_CLASSES),
        "label_balance": (
            {split: dict(sorted(counts.items())) for split, counts in answers.items()}
            if len(distinct) <= MAX_LABEL_CLASSES
            else None
        ),
    }
    manifest = {
        "source": shown["path"],
        "hub_split": data.hub_split if is_dataset_source(data.path) else None,
        "fingerprint": fingerprint,
        "prep_version": PREP_VERSION,
        "format": selection.fmt,
        "seed": config.seed,
        "rows": stats["rows"],
        "data_config": shown,
    }
    files["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if selection.rejects:
        files["rejects.jsonl"] = "".join(json.dumps(reject, ensure_ascii=False) + "\n" for reject in selection.rejects)
    files["stats.json"] = json.dumps(stats, indent=2, sort_keys=True) + "\n"
    _write_files(out_dir, files, replace)
    if stats_path is not None:
        _write_json(Path(stats_path), stats)
    return stats
