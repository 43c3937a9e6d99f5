"""Data preparation on the real SST-2 file with the real SmolLM2 tokenizer and the demo config."""

from __future__ import annotations

import json

import pytest

from tasks.lib.config import load_config
from tasks.lib.dataset.prepare import prepare_dataset
from tasks.lib.dataset.tokenization import IGNORE_INDEX, tokenize_conversation
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    config = load_config(
        REPO_ROOT / "configs" / "demo.yaml",
        [
            f"data.path={REPO_ROOT / 'data/raw/sst2/train.tsv'}",
            f"data.test_path={REPO_ROOT / 'data/raw/sst2/dev.tsv'}",
            "data.max_rows=300",
        ],
    )
    from tasks.io.models import load_tokenizer

    tokenizer = load_tokenizer(
        config.model.model_copy(update={"name_or_path": str(REPO_ROOT / config.model.name_or_path)})
    )
    return config, tokenizer


def test_sst2_demo_preparation(tmp_path, demo, demo_model_dir):
    config, tokenizer = demo
    stats = prepare_dataset(config, tokenizer, tmp_path / "demo", tmp_path / "stats.json")
    assert stats["rows_read"] == 67349
    assert stats["rows_selected"] == 300 and stats["dropped_overlong"] == 0
    # max_rows applies to train.tsv (train + validation); the test items are all of SST-2 dev.
    assert stats["rows"] == {"train": 285, "validation": 15, "test": 872}
    assert stats["label_balance"]["test"] == {"negative": 428, "positive": 444}
    assert stats["decontamination"]["test_items_inside_train_rows"] == 0
    # SST-2 train is 56% positive; a 300-row random sample lands well inside 40-72%.
    total = {
        label: sum(stats["label_balance"][split].get(label, 0) for split in ("train", "validation"))
        for label in ("positive", "negative")
    }
    assert sum(total.values()) == 300 and 0.40 < total["positive"] / 300 < 0.72

    rows = [json.loads(line) for line in (tmp_path / "demo" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 285
    for row in rows:
        answer = row["messages"][-1]["content"]
        unmasked = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert tokenizer.decode(unmasked) == f"{answer}<|im_end|>"
        assert answer in {"positive", "negative"}
        assert row["messages"][0]["content"].startswith("Is the sentiment of this movie review")
        assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(row["input_ids"])


def test_multi_turn_masking_on_smollm2_tokenizer(demo):
    _, tokenizer = demo
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Review: a great film. Sentiment?"},
        {"role": "assistant", "content": "positive"},
    ]
    encoded = tokenize_conversation(messages, tokenizer, max_length=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    unmasked = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in unmasked)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    runs, start = [], unmasked[0]
    for previous, current in zip(unmasked, unmasked[1:] + [None], strict=True):
        if current != previous + 1:
            runs.append(ids[start : previous + 1])
            start = current
    assert [tokenizer.decode(run) for run in runs] == ["Paris.<|im_end|>", "positive<|im_end|>"]
    assert all(run[-1] == end for run in runs)
