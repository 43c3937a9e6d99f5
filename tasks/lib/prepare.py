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

from tasks.lib.chat_rows import check_template_columns, detect_format, row_to_messages, template_columns
from tasks.lib.config import DataConfig, RunConfig
from tasks.lib.data_formats import (
    DataError,
    HubOptions,
    TableOptions,
    is_dataset_source,
    is_hub_id,
    load_located_rows,
    location_word,
    raise_collected,
    read_jsonl,
    resolved_hub_revision,
)
from tasks.lib.hashing import file_md5
from tasks.lib.plots import pyplot, save_png
from tasks.lib.publish import publish_dir, publish_text

PREP_VERSION = 3  # bump when the output of this module changes for the same inputs
SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100
MAX_LABEL_CLASSES = 20

# ---------------------------------------------------------------- tokenising + masking


def _render_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer, max_length: int, overlong: str = "drop"
) -> dict[str, Any] | None:
    """input_ids + labels (-100 except on assistant answers and their end-of-turn token).

    Returns None when the row is over max_length and `overlong` is "drop", or when truncation (which cuts
    the end) leaves no answer token. The dict's "truncated" flag says whether it was cut.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; set model.chat_template in the config")
    full = _render_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    special = set(tokenizer.all_special_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render_ids(tokenizer, messages[:index], add_generation_prompt=True)
        last = index + 1 == len(messages)
        upto = full if last else _render_ids(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise DataError(
                "the chat template does not render conversations prefix-consistently (the prompt of "
                f"assistant turn {index + 1} is not a prefix of the full rendering), so answer tokens "
                "cannot be located; set model.chat_template to a template that does"
            )
        # Stop after the last special token (the end-of-turn marker), leaving the template's separator masked.
        marks = [j for j in range(len(prompt), len(upto)) if upto[j] in special]
        end = marks[-1] + 1 if marks else len(upto)
        labels[len(prompt) : end] = upto[len(prompt) : end]
    truncated = len(full) > max_length
    if truncated:
        if overlong == "drop":
            return None
        full, labels = full[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            return None
    return {"input_ids": full, "labels": labels, "truncated": truncated}


# ---------------------------------------------------------------- fingerprint


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides the token ids: the vocabulary, special tokens and the chat template."""
    payload = json.dumps(
        {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": sorted(tokenizer.all_special_tokens),
            "chat_template": tokenizer.chat_template,
            "class": type(tokenizer).__name__,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


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


class SourceRow(NamedTuple):
    id: str
    split_key: str  # the raw row, canonical: templates and value maps do not move a row between splits
    messages: list[dict[str, str]]
    prompt: str  # the raw prompt-side text, normalised: what decontamination compares


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive form used to find the same item in two splits."""
    return " ".join(text.casefold().split())


def prompt_text(row: dict[str, Any], messages: list[dict[str, str]], fmt: str, data: DataConfig) -> str:
    """The item's input as the data set gives it: template columns raw, otherwise the user turns."""
    if fmt == "template":
        columns = sorted(template_columns(data.prompt_template or ""))
        return normalise_text("\n".join(str(row.get(column, "")) for column in columns))
    return normalise_text("\n".join(m["content"] for m in messages if m["role"] == "user"))


def hub_options(data: DataConfig) -> HubOptions:
    return HubOptions(name=data.hub_config, revision=data.hub_revision)


def replay_config(data: DataConfig) -> DataConfig:
    """The replay source as a data section of its own (its format and hub settings; the task's table options)."""
    replay = data.replay
    return DataConfig(
        path=replay.path,
        format=replay.format,
        hub_split=replay.hub_split,
        hub_config=replay.hub_config,
        hub_revision=replay.hub_revision,
        table=data.table,
    )


def table_options(data: DataConfig) -> TableOptions:
    table = data.table
    columns = tuple(table.columns) if table.columns else None
    return TableOptions(header=table.header, columns=columns, delimiter=table.delimiter, quoting=table.quoting)


def _renamed(row: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    return {renames.get(key, key): value for key, value in row.items()} if isinstance(row, dict) else row


def _load_source(
    path: str, hub_split: str, data: DataConfig, fmt: str | None
) -> tuple[list[tuple[int, dict[str, Any]]], DataConfig]:
    """A source's located rows with columns renamed, and `data` with its format resolved (`fmt`, else
    detected from the first row); template sources are checked for the columns they name."""
    located = load_located_rows(path, hub_split, table_options(data), hub_options(data))
    if data.rename_columns:
        located = [(number, _renamed(row, data.rename_columns)) for number, row in located]
    if fmt is None:
        first_where = f"{path} {location_word(path)} {located[0][0]}"
        fmt = detect_format(located[0][1], first_where) if data.format == "auto" else data.format
    if fmt == "template":
        check_template_columns(list(located[0][1]), data, path)
    return located, data.model_copy(update={"format": fmt})


def _normalise_source(
    path: str, hub_split: str, data: DataConfig, fmt: str | None = None, rejects: list[dict] | None = None
) -> tuple[list[SourceRow], str]:
    """Load and normalise every row of one source; returns the rows and the format.

    Invalid rows: with `data.on_invalid: error` all of them are raised at once; with `drop` they are appended
    to `rejects` (source, location, reason), unless more than `data.max_invalid_fraction` of the rows are
    invalid, which is an error anyway (a wrong template or format, not a few bad rows).
    """
    located, resolved = _load_source(path, hub_split, data, fmt)
    fmt, word = resolved.format, location_word(path)
    stem = Path(path).stem if not is_dataset_source(path) else f"{path.strip('/').replace('/', '--')}-{hub_split}"
    rows, errors, dropped = [], [], []
    for number, row in located:
        where = f"{path} {word} {number}"
        try:
            messages = row_to_messages(row, resolved, where)
        except DataError as error:
            errors.append(str(error))
            dropped.append({"source": path, word: number, "reason": str(error).removeprefix(f"{where}: ")})
            continue
        raw = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        rows.append(SourceRow(f"{stem}-{number}", raw, messages, prompt_text(row, messages, fmt, resolved)))
    if data.on_invalid == "error" or len(errors) > data.max_invalid_fraction * len(located):
        limit = (
            "" if data.on_invalid == "error" else f" (more than data.max_invalid_fraction={data.max_invalid_fraction})"
        )
        raise_collected(errors, f"{path}: invalid rows{limit}")
    if rejects is not None:
        rejects.extend(dropped)
    return rows, fmt


def check_sources(data: DataConfig, sample: int = 100) -> list[str]:
    """Read every local source and check its shape against the config (format, template columns, value maps,
    the first `sample` rows normalised) without tokenising: what `qlora validate` runs, in seconds.

    Raises DataError naming the file and line; returns notes on what was not checked (hub sets: need network).
    """
    notes, fmt = [], None
    for key, split in (
        ("path", "hub_split"),
        ("validation_path", "validation_hub_split"),
        ("test_path", "test_hub_split"),
    ):
        path = getattr(data, key)
        if path is None:
            continue
        if is_hub_id(path):
            notes.append(f"data.{key} {path} is a hub data set: its columns are checked when it is prepared")
            continue
        located, resolved = _load_source(path, getattr(data, split), data, fmt)
        fmt, word = resolved.format, location_word(path)
        for number, row in located[:sample]:
            row_to_messages(row, resolved, f"{path} {word} {number}")
    return notes


def _add_replay(parts: dict[str, list[SourceRow]], data: DataConfig, seed: int) -> int:
    """Append replay rows to the training split so they make up `data.replay.fraction` of it; held-out inputs
    are never replayed. Returns how many were added (fewer when the replay source is small)."""
    replay = data.replay
    rows, _ = _normalise_source(replay.path, replay.hub_split, replay_config(data))
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


def length_summary(lengths: list[int]) -> dict[str, int]:
    """Token lengths of a split's rows (prompt + answer): min, median, 95th percentile, max."""
    if not lengths:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def split_lengths(processed_dir: Path) -> dict[str, list[int]]:
    """Token length of every prepared row, per split (what the data report's histogram shows)."""
    return {
        split: [len(row["input_ids"]) for _, row in read_jsonl(Path(processed_dir) / f"{split}.jsonl")]
        for split in SPLITS
    }


def data_length_histogram(lengths: dict[str, list[int]], max_length: int, path: Path) -> Path:
    """PNG: the token-length distribution of each prepared split, with the data.max_length limit."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.2))
    bins = range(0, max_length + 9, max(1, (max_length + 8) // 40))
    for split, values in lengths.items():
        axis.hist(values, bins=bins, histtype="step", density=True, linewidth=1.5, label=f"{split} ({len(values)})")
    axis.axvline(max_length, color="grey", linestyle="--", linewidth=0.8, label="data.max_length")
    axis.set_xlabel("tokens per row (prompt + answer)")
    axis.set_ylabel("share of rows")
    axis.legend(fontsize=8)
    return save_png(figure, path)


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
    rows, fmt = _normalise_source(data.path, data.hub_split, data, rejects=rejects)
    rows_read = len(rows)
    if data.deduplicate:
        rows = _deduplicate(rows)
    ranked = _ranked(rows, config.seed)
    ranked = ranked[: data.max_rows] if data.max_rows else ranked
    parts = _cut(ranked, _split_counts(len(ranked), data))
    for name in ("validation", "test"):
        source = getattr(data, f"{name}_path")
        if source:
            held_out, _ = _normalise_source(source, getattr(data, f"{name}_hub_split"), data, fmt, rejects)
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
