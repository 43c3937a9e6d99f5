"""Row normalisation, loss masking and the atomic, deterministic train/validation/test preparation."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from tasks.lib.config import DataConfig, RunConfig, config_from_dict
from tasks.lib.dataset.chat_rows import row_to_messages
from tasks.lib.dataset.data_formats import DataError, resolved_hub_revision
from tasks.lib.dataset.prepare import input_fingerprint, is_up_to_date, prepare_dataset
from tasks.lib.dataset.tokenization import IGNORE_INDEX, tokenize_conversation

SMOLLM2_TEMPLATE = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct" / "chat_template.jinja"
SST2_DATA = {
    "format": "template",
    "prompt_template": "Review: {sentence}\nPositive or negative?",
    "completion_template": "{label}",
    "value_maps": {"label": {"0": "negative", "1": "positive"}},
}
WORDS = "the a film movie great bad awful good review was is it this that".split()


def _config(path: Path | str, seed: int = 0, **data) -> RunConfig:
    return config_from_dict(
        {
            "name": "t",
            "seed": seed,
            "model": {"name_or_path": "tiny"},
            "registry": {"model_name": "tiny"},
            "data": {"path": str(path), "max_length": 64, **data},
        }
    )


def _data(**data) -> DataConfig:
    return DataConfig(path="x.jsonl", **data)


def _sst2_file(path: Path, rows: int = 60, seed: int = 1) -> Path:
    rng = random.Random(seed)
    lines = ["label\tsentence"]
    for number in range(rows):
        words = " ".join(rng.choice(WORDS) for _ in range(4))
        lines.append(f'{number % 2}\t{words} " {number}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prepare(config: RunConfig, tokenizer, root: Path, name: str = "out") -> tuple[dict, Path]:
    out_dir = root / name
    return prepare_dataset(config, tokenizer, out_dir, root / f"{name}-stats.json"), out_dir


def _read_split(out_dir: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def smol_template_tokenizer(tiny_tokenizer):
    """The tiny tokenizer with SmolLM2's real chat template (a default system turn)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = SMOLLM2_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


# ---------------------------------------------------------------- row_to_messages


def test_alpaca_with_and_without_input():
    data = _data(format="alpaca")
    assert row_to_messages({"instruction": "Add", "input": "1+1", "output": "2"}, data, "f line 1") == [
        {"role": "user", "content": "Add\n\n1+1"},
        {"role": "assistant", "content": "2"},
    ]
    assert row_to_messages({"instruction": "Say hi", "output": "hi"}, data, "f line 1")[0]["content"] == "Say hi"


def test_prompt_completion_and_system_prompt():
    data = _data(format="prompt_completion", system_prompt="Be brief.")
    assert row_to_messages({"prompt": "q", "completion": "a"}, data, "f line 1") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_chat_and_sharegpt():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert row_to_messages({"messages": messages}, _data(format="chat"), "f line 1") == messages
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert row_to_messages(sharegpt, _data(format="chat"), "f line 1") == messages


def test_template_with_value_maps():
    messages = row_to_messages({"label": "1", "sentence": "great film"}, _data(**SST2_DATA), "f line 2")
    assert messages == [
        {"role": "user", "content": "Review: great film\nPositive or negative?"},
        {"role": "assistant", "content": "positive"},
    ]
    with pytest.raises(DataError, match=r"f line 3: column 'label' value '7' is not in data.value_maps.label"):
        row_to_messages({"label": "7", "sentence": "x"}, _data(**SST2_DATA), "f line 3")


@pytest.mark.parametrize(
    ("row", "first_role"),
    [
        ({"instruction": "i", "output": "o"}, "user"),
        ({"prompt": "p", "completion": "c"}, "user"),
        (
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "system",
        ),
    ],
)
def test_auto_detection(row, first_role):
    messages = row_to_messages(row, _data(format="auto"), "f line 1")
    assert messages[0]["role"] == first_role and messages[-1]["role"] == "assistant"


def test_auto_detection_refuses_ambiguous_and_unknown_rows():
    with pytest.raises(DataError, match=r"f line 1: ambiguous data format.*alpaca.*prompt_completion"):
        row_to_messages({"instruction": "i", "output": "o", "prompt": "p", "completion": "c"}, _data(), "f line 1")
    with pytest.raises(DataError, match=r"f line 1: cannot detect the data format from columns \[label, text\]"):
        row_to_messages({"label": "1", "text": "t"}, _data(), "f line 1")


@pytest.mark.parametrize(
    "roles",
    [
        ["assistant", "user"],
        ["user", "user", "assistant"],
        ["user"],
        ["user", "assistant", "system"],
        ["system", "assistant"],
        ["user", "assistant", "user"],
    ],
)
def test_chat_roles_out_of_order(roles):
    row = {"messages": [{"role": role, "content": "x"} for role in roles]}
    with pytest.raises(DataError, match=r"f line 4: chat roles out of order"):
        row_to_messages(row, _data(format="chat"), "f line 4")


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}, r"role 'bot'"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, r"empty"),
        ({"messages": []}, r"non-empty list"),
        ({"messages": ["hi"]}, r"message 1 must be an object"),
    ],
)
def test_chat_message_errors(row, pattern):
    with pytest.raises(DataError, match=rf"f line 9: .*{pattern}"):
        row_to_messages(row, _data(format="chat"), "f line 9")


def test_missing_field_names_the_field():
    with pytest.raises(DataError, match=r"f line 2: missing field 'output'"):
        row_to_messages({"instruction": "i"}, _data(format="alpaca"), "f line 2")
    with pytest.raises(DataError, match=r"f line 2: field 'completion' is empty"):
        row_to_messages({"prompt": "p", "completion": ""}, _data(format="prompt_completion"), "f line 2")


# ---------------------------------------------------------------- masking


def _check_masking(tokenizer, messages, answers):
    encoded = tokenize_conversation(messages, tokenizer, max_length=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert len(ids) == len(labels)
    # Every position is either masked or an exact copy of the input token.
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    # The unmasked runs, in order, are exactly each answer followed by the end-of-turn token.
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    runs += [current] if current else []
    expected = [tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False) for answer in answers]
    assert runs == expected


def test_masking_single_turn_chatml(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "Is the film good?"},
        {"role": "assistant", "content": "positive"},
    ]
    _check_masking(tiny_tokenizer, messages, ["positive"])


def test_masking_real_smollm2_template_with_default_system_turn(smol_template_tokenizer):
    messages = [
        {"role": "user", "content": "Is the film good?"},
        {"role": "assistant", "content": "negative"},
    ]
    _check_masking(smol_template_tokenizer, messages, ["negative"])
    text = smol_template_tokenizer.decode(tokenize_conversation(messages, smol_template_tokenizer, 512)["input_ids"])
    assert "You are a helpful AI assistant named SmolLM" in text  # the default system turn is there, masked


def test_masking_multi_turn(smol_template_tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the review?"},
        {"role": "assistant", "content": "It was great."},
    ]
    _check_masking(smol_template_tokenizer, messages, ["Paris.", "It was great."])


def test_template_without_prefix_property_is_refused(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # Renders only the last message: the prompt rendering is not a prefix of the conversation's.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]
    with pytest.raises(DataError, match="prefix"):
        tokenize_conversation(messages, tokenizer, 64)


def test_overlong_drop_and_truncate(tiny_tokenizer):
    messages = [{"role": "user", "content": "the film " * 30}, {"role": "assistant", "content": "positive"}]
    full = tokenize_conversation(messages, tiny_tokenizer, 10_000)
    assert not full["truncated"]
    limit = len(full["input_ids"]) - 1
    assert tokenize_conversation(messages, tiny_tokenizer, limit, "drop") is None
    cut = tokenize_conversation(messages, tiny_tokenizer, limit, "truncate")
    assert cut["truncated"] and cut["input_ids"] == full["input_ids"][:limit]
    assert cut["labels"] == full["labels"][:limit]
    # A cut that removes every answer token drops the row.
    assert tokenize_conversation(messages, tiny_tokenizer, 20, "truncate") is None


# ---------------------------------------------------------------- prepare_dataset


def test_prepare_sst2_like_tsv(tmp_path, tiny_tokenizer):
    source = _sst2_file(tmp_path / "train.tsv", rows=60)
    config = _config(source, **SST2_DATA, split={"validation": 0.1, "test": 0.2})
    stats, out_dir = _prepare(config, tiny_tokenizer, tmp_path)
    splits = {split: _read_split(out_dir, split) for split in ("train", "validation", "test")}
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 42, "validation": 6, "test": 12}
    assert stats["rows"] == {"train": 42, "validation": 6, "test": 12} and stats["rows_read"] == 60
    ids = [row["id"] for rows in splits.values() for row in rows]
    assert len(ids) == len(set(ids)) == 60
    for row in splits["train"]:
        assert set(row) == {"id", "messages", "input_ids", "labels"}
        assert row["messages"][-1]["content"] in {"positive", "negative"}
        answer = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert tiny_tokenizer.decode(answer) == row["messages"][-1]["content"] + "<|im_end|>"
    balance = stats["label_balance"]
    assert sum(balance["train"].values()) == 42 and set(balance["train"]) <= {"positive", "negative"}
    assert stats["answer_tokens"]["train"] == sum(
        sum(label != IGNORE_INDEX for label in row["labels"]) for row in splits["train"]
    )
    assert json.loads((tmp_path / "out-stats.json").read_text()) == stats
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["fingerprint"] == input_fingerprint(config, tiny_tokenizer)
    assert is_up_to_date(out_dir, manifest["fingerprint"])
    assert not is_up_to_date(out_dir, input_fingerprint(_config(source, seed=1, **SST2_DATA), tiny_tokenizer))


def test_split_is_deterministic_and_seeded(tmp_path, tiny_tokenizer):
    source = _sst2_file(tmp_path / "train.tsv", rows=80)
    _prepare(_config(source, **SST2_DATA), tiny_tokenizer, tmp_path, "a")
    _prepare(_config(source, **SST2_DATA), tiny_tokenizer, tmp_path, "b")
    _prepare(_config(source, seed=7, **SST2_DATA), tiny_tokenizer, tmp_path, "c")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    test_ids = {
        seed: {row["id"] for row in _read_split(tmp_path / name, "test")} for seed, name in [(0, "a"), (7, "c")]
    }
    assert test_ids[0] != test_ids[7]
    # Row order in the file does not change which split a row lands in.
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    _prepare(_config(shuffled, **SST2_DATA), tiny_tokenizer, tmp_path, "d")
    contents = {json.dumps(row["messages"]) for row in _read_split(tmp_path / "a", "test")}
    assert contents == {json.dumps(row["messages"]) for row in _read_split(tmp_path / "d", "test")}


def test_deduplicate_and_max_rows(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"question {i % 10}", "completion": "positive"} for i in range(30)]
    source = tmp_path / "d.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    stats, _ = _prepare(_config(source), tiny_tokenizer, tmp_path, "dedup")
    assert stats["duplicates_removed"] == 20 and sum(stats["rows"].values()) == 10
    stats, out_dir = _prepare(_config(source, deduplicate=False), tiny_tokenizer, tmp_path, "dups")
    assert stats["duplicates_removed"] == 0 and sum(stats["rows"].values()) == 30
    # Identical rows never straddle splits.
    where = {}
    for split in ("train", "validation", "test"):
        for row in _read_split(out_dir, split):
            assert where.setdefault(row["messages"][0]["content"], split) == split
    stats, _ = _prepare(_config(source, max_rows=5), tiny_tokenizer, tmp_path, "five")
    assert stats["rows_selected"] == 5 and sum(stats["rows"].values()) == 5


def test_overlong_counts_in_stats(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "the film " * (40 if i < 4 else 1), "completion": "positive"} for i in range(20)]
    rows = [dict(row, prompt=f"{row['prompt']}{i}") for i, row in enumerate(rows)]
    source = tmp_path / "d.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    stats, _ = _prepare(_config(source, max_length=40), tiny_tokenizer, tmp_path, "drop")
    assert stats["dropped_overlong"] == 4 and stats["truncated"] == 0 and sum(stats["rows"].values()) == 16
    stats, _ = _prepare(_config(source, max_length=40, overlong="truncate"), tiny_tokenizer, tmp_path, "trunc")
    # Cutting the end removes these rows' answers, so they are dropped, never kept without an answer.
    assert stats["dropped_overlong"] == 4 and stats["truncated"] == 0
    # A long second turn is cut but the first answer survives: the row is kept, counted as truncated.
    turns = ["hi", "positive", "the film " * 40, "negative"]
    rows.append(
        {"messages": [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 2, turns, strict=True)]}
    )
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(json.dumps({"messages": row_to_messages(row, _data(), "x")}) for row in rows))
    stats, out_dir = _prepare(_config(source, max_length=40, overlong="truncate"), tiny_tokenizer, tmp_path, "c")
    assert stats["truncated"] == 1 and stats["dropped_overlong"] == 4
    kept = [row for split in ("train", "validation", "test") for row in _read_split(out_dir, split)]
    assert max(len(row["input_ids"]) for row in kept) == 40


def _good_jsonl(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(10)) + "\n")
    return path


BAD_INPUTS = [
    (
        "malformed.jsonl",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n',
        {},
        r"line 2: malformed JSON",
    ),
    (
        "missing.jsonl",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n',
        {},
        r"line 2: missing field 'completion'",
    ),
    ("empty.jsonl", b"", {}, r"no rows"),
    (
        "latin1.jsonl",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xe9"}\n',
        {},
        r"line 2: not valid UTF-8",
    ),
    (
        "roles.jsonl",
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        b'{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}\n',
        {},
        r"line 2: chat roles out of order",
    ),
    (
        "nolabel.tsv",
        b"sentiment\tsentence\n0\tgood\n",
        SST2_DATA,
        r"column\(s\) 'label' used by .* not found; available columns: sentiment, sentence",
    ),
]


@pytest.mark.parametrize(("name", "content", "data", "pattern"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_name_file_and_line_and_leave_no_output(tmp_path, tiny_tokenizer, name, content, data, pattern):
    bad = tmp_path / name
    bad.write_bytes(content)
    out_dir = tmp_path / "processed"
    with pytest.raises(DataError, match=pattern) as error:
        prepare_dataset(_config(bad, **data), tiny_tokenizer, out_dir, tmp_path / "stats.json")
    assert str(bad) in str(error.value)
    assert not out_dir.exists() and not (tmp_path / "stats.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp folder left behind

    # A previous good output survives a failed re-run untouched.
    _, good_dir = _prepare(_config(_good_jsonl(tmp_path / "good.jsonl")), tiny_tokenizer, tmp_path, "processed")
    before = {p.name: p.read_bytes() for p in good_dir.iterdir()}
    with pytest.raises(DataError):
        prepare_dataset(_config(bad, **data), tiny_tokenizer, out_dir, tmp_path / "stats.json")
    assert {p.name: p.read_bytes() for p in good_dir.iterdir()} == before


def test_all_row_errors_are_reported_once_with_a_cap(tmp_path, tiny_tokenizer):
    bad = tmp_path / "many.jsonl"
    bad.write_text("\n".join(json.dumps({"prompt": f"q{i}"}) for i in range(25)) + "\n")
    with pytest.raises(DataError) as error:
        prepare_dataset(_config(bad, format="prompt_completion"), tiny_tokenizer, tmp_path / "o", tmp_path / "s")
    message = str(error.value)
    assert "25 problem(s)" in message and "... and 5 more" in message
    assert f"{bad} line 1: missing field 'completion'" in message and f"{bad} line 20:" in message
    assert f"{bad} line 21:" not in message


def test_successful_rerun_replaces_old_output(tmp_path, tiny_tokenizer):
    source = _good_jsonl(tmp_path / "good.jsonl")
    _, out_dir = _prepare(_config(source), tiny_tokenizer, tmp_path)
    (out_dir / "stale.txt").write_text("old")
    _prepare(_config(source, seed=3), tiny_tokenizer, tmp_path)
    assert not (out_dir / "stale.txt").exists()
    assert json.loads((out_dir / "manifest.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "out", "out-stats.json"]


# ---------------------------------------------------------------- held-out data that stays held out


def _ids(out_dir: Path, split: str) -> list[str]:
    return [row["id"] for row in _read_split(out_dir, split)]


def test_changed_template_keeps_the_same_test_items(tmp_path, tiny_tokenizer):
    path = _sst2_file(tmp_path / "data.tsv")
    _, first = _prepare(_config(path, **SST2_DATA), tiny_tokenizer, tmp_path, "a")
    reworded = {
        **SST2_DATA,
        "prompt_template": "Movie review:\n{sentence}\nIs it positive or negative?",
        "value_maps": {"label": {"0": "neg", "1": "pos"}},
        "system_prompt": "You label sentiment.",
    }
    _, second = _prepare(_config(path, **reworded), tiny_tokenizer, tmp_path, "b")
    assert _read_split(first, "test")[0]["messages"] != _read_split(second, "test")[0]["messages"]
    for split in ("train", "validation", "test"):
        assert _ids(first, split) == _ids(second, split)


def test_separate_test_source_with_renamed_column_and_decontamination(tmp_path, tiny_tokenizer):
    train = _sst2_file(tmp_path / "train.tsv", rows=60)
    train_lines = train.read_text().splitlines()
    held_out_sentence = train_lines[7].split("\t")[1]  # also in training: must leave the training split
    test = tmp_path / "dev.tsv"
    test.write_text(
        "label\tcontent\n"
        f"1\t{held_out_sentence.upper()}\n"  # the same item up to case
        f"0\t{train_lines[9].split(chr(9))[1][:12]}\n"  # a phrase quoted inside a training row
        "1\tan unseen sentence entirely\n",
        encoding="utf-8",
    )
    data = {**SST2_DATA, "test_path": str(test), "rename_columns": {"content": "sentence"}, "split": {"test": 0.0}}
    stats, out = _prepare(_config(train, **data), tiny_tokenizer, tmp_path)
    assert stats["rows"]["test"] == 3 and all(i.startswith("dev-") for i in _ids(out, "test"))
    assert stats["decontamination"]["train_rows_removed_as_held_out"] == 1
    assert stats["decontamination"]["test_items_inside_train_rows"] == 1
    assert not any(held_out_sentence in row["messages"][-2]["content"] for row in _read_split(out, "train"))
    assert stats["sources"]["test"] == str(test)


def test_zero_test_fraction_needs_a_test_source(tmp_path):
    with pytest.raises(ValueError, match="test_path"):
        _config(tmp_path / "x.tsv", **{**SST2_DATA, "split": {"test": 0.0}})


def _alpaca_with_empty_outputs(path: Path, rows: int = 40, empty: tuple[int, ...] = (3, 17)) -> Path:
    lines = [
        json.dumps({"instruction": f"Say the number {i}", "input": "", "output": "" if i in empty else str(i)})
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_invalid_rows_are_dropped_into_a_rejects_file_when_asked(tmp_path, tiny_tokenizer):
    path = _alpaca_with_empty_outputs(tmp_path / "alpaca.jsonl")
    with pytest.raises(DataError, match="line 4"):
        _prepare(_config(path, format="alpaca"), tiny_tokenizer, tmp_path, "strict")
    stats, out = _prepare(_config(path, format="alpaca", on_invalid="drop"), tiny_tokenizer, tmp_path, "lenient")
    assert stats["invalid_rows_dropped"] == 2 and stats["rows_read"] == 38
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"]) for r in rejects] == [(str(path), 4), (str(path), 18)]
    assert all("output" in r["reason"] for r in rejects)


def test_too_many_invalid_rows_are_an_error_even_when_dropping(tmp_path, tiny_tokenizer):
    path = _alpaca_with_empty_outputs(tmp_path / "alpaca.jsonl", rows=20, empty=tuple(range(5)))
    with pytest.raises(DataError, match="max_invalid_fraction"):
        _prepare(_config(path, format="alpaca", on_invalid="drop"), tiny_tokenizer, tmp_path)


ALPACA_DEMO = Path(__file__).resolve().parents[2] / "data" / "raw" / "alpaca_gpt4_en_demo" / "alpaca_en_demo.json"


def test_replay_rows_go_into_training_only(tmp_path, tiny_tokenizer):
    path = _sst2_file(tmp_path / "data.tsv", rows=80)
    plain, plain_out = _prepare(_config(path, **SST2_DATA), tiny_tokenizer, tmp_path, "plain")
    replay = {"path": str(ALPACA_DEMO), "format": "alpaca", "fraction": 0.2}
    data = {**SST2_DATA, "max_length": 512, "overlong": "drop", "replay": replay}
    stats, out = _prepare(_config(path, **data), tiny_tokenizer, tmp_path, "mixed")
    train_ids = _ids(out, "train")
    replayed = [row_id for row_id in train_ids if row_id.startswith("replay-")]
    assert stats["replay_rows"] == round(plain["rows"]["train"] * 0.2 / 0.8) and replayed
    assert len(replayed) >= stats["replay_rows"] - stats["dropped_overlong"]
    for split in ("validation", "test"):  # held-out splits are exactly those without replay
        assert _ids(out, split) == _ids(plain_out, split)
    assert not any(row_id.startswith("replay-") for row_id in _ids(out, "validation") + _ids(out, "test"))


def test_a_base_model_without_a_chat_template_gets_a_clear_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from tasks.io.models import load_tokenizer
    from tasks.lib.config import ConfigError, ModelConfig

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink()
    with pytest.raises(ConfigError, match="model.chat_template: .* has no chat template"):
        load_tokenizer(ModelConfig(name_or_path=str(base)))
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(base), chat_template="chatml"))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"


def test_a_split_left_empty_is_refused_before_training(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [{"prompt": "Same question?", "completion": "Same answer."}] * 30  # all duplicates: one row survives
    path = tmp_path / "dupes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"no (validation|test) rows left .*29 duplicates removed"):
        _prepare(_config(path, format="prompt_completion"), tiny_tokenizer, tmp_path)
    assert not (tmp_path / "out").exists()


def test_data_artefacts_are_reported(tmp_path: Path, tiny_tokenizer) -> None:
    rows = [
        {
            "prompt": f"### Instruction:\nWrite sentence number {i}.\n\n### Response:",
            "completion": f"This is sentence {i} of a long story. ###eos_token###",
        }
        for i in range(40)
    ]
    rows[0]["completion"] = "A reply with a stray <|im_end|> inside."
    path = tmp_path / "artefacts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    stats, _ = _prepare(_config(path, format="prompt_completion", max_length=128), tiny_tokenizer, tmp_path)
    warnings = "\n".join(stats["warnings"])
    assert "end with '###eos_token###'" in warnings
    assert "'<|im_end|>'" in warnings
    assert "already contain an instruction template" in warnings

    clean, _ = _prepare(
        _config(
            _sst2_file(tmp_path / "sst2.tsv"),
            format="template",
            prompt_template="{sentence}",
            completion_template="{label}",
        ),
        tiny_tokenizer,
        tmp_path,
        "clean",
    )
    assert clean["warnings"] == []


def _hub_style_folder(root: Path) -> Path:
    """A data set folder as the hub lays one out: two configurations, each with train and validation files."""
    readme = ["---", "configs:"]
    for name, shift in (("sst2", 0), ("other", 1)):
        readme += [f"- config_name: {name}", "  data_files:"]
        for split, count in (("train", 40), ("validation", 10)):
            readme += [f"  - split: {split}", f"    path: {name}/{split}.jsonl"]
            (root / name).mkdir(parents=True, exist_ok=True)
            sentences = [f"{name} {split} review {i} {WORDS[i % len(WORDS)]}" for i in range(count)]
            lines = [json.dumps({"sentence": text, "label": (i + shift) % 2}) for i, text in enumerate(sentences)]
            (root / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "README.md").write_text("\n".join([*readme, "---", ""]))
    return root


def test_a_hub_style_data_set_folder_with_a_config_name(tmp_path, tiny_tokenizer):
    folder = _hub_style_folder(tmp_path / "glue")
    settings = dict(SST2_DATA, value_maps={"label": {"0": "negative", "1": "positive"}})
    config = _config(
        folder,
        **settings,
        hub_config="sst2",
        test_path=str(folder),
        test_hub_split="validation",
        split={"validation": 0.1, "test": 0.0},
    )
    stats, out_dir = _prepare(config, tiny_tokenizer, tmp_path)
    assert stats["rows"] == {"train": 36, "validation": 4, "test": 10}
    test_prompts = [row["messages"][-2]["content"] for row in _read_split(out_dir, "test")]
    assert all("sst2 validation review" in prompt for prompt in test_prompts)
    other = config.model_copy(update={"data": config.data.model_copy(update={"hub_config": "other"})})
    assert input_fingerprint(other, tiny_tokenizer) != input_fingerprint(config, tiny_tokenizer)
    assert stats["length_tokens"]["train"]["min"] <= stats["length_tokens"]["train"]["p50"]
    assert stats["length_tokens"]["train"]["max"] <= config.data.max_length


def test_a_hub_revision_is_resolved_to_a_commit_or_refused_offline(monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert resolved_hub_revision("nyu-mll/glue", commit) == commit
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="data.hub_revision"):
        resolved_hub_revision("nyu-mll/glue", "main")
