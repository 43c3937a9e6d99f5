"""The raw -> JSONL benchmark converter, on the real DVC raw files and on malformed copies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.lib.general_benchmarks.benchmark_data import BenchmarkDataError, prepare_benchmarks
from tests.conftest import RAW_DATA_DIR


def _rows(path: Path) -> list[dict]:
    # split on "\n", not splitlines(): a U+2028 inside a text field is not a line break
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "benchmarks"
    return out, prepare_benchmarks(RAW_DATA_DIR, out)


def test_counts_match_source_txt(prepared: tuple[Path, dict]) -> None:
    out, summary = prepared
    expected = {
        **{"hellaswag": 10042, "arc_easy": 2376, "piqa": 1838, "lambada": 5153, "wikitext": 62},
        **{"winogrande": 1267, "boolq": 3270, "openbookqa": 500, "copa": 100, "mmlu": 14042, "truthfulqa_mc1": 817},
    }
    assert {name: summary[name]["items"] for name in expected} == expected
    for name, count in expected.items():
        assert len(_rows(out / f"{name}.jsonl")) == count
    assert json.loads((out / "manifest.json").read_text())["piqa"]["items"] == 1838


def test_first_items_match_the_documented_examples(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    hellaswag = _rows(out / "hellaswag.jsonl")[0]
    assert hellaswag["query"] == "Roof shingle removal: A man is sitting on a roof. he"
    assert hellaswag["choices"][hellaswag["label"]] == "starts pulling up roofing on a roof."
    arc = _rows(out / "arc_easy.jsonl")[0]
    assert arc["id"] == "Mercury_417466"
    assert arc["choices"][arc["label"]] == "Sunlight is the source of energy for nearly all ecosystems."
    piqa = _rows(out / "piqa.jsonl")[0]
    assert piqa["query"].startswith("How do I ready a guinea pig cage") and piqa["label"] == 0
    assert len(piqa["choices"]) == 2
    lambada = _rows(out / "lambada.jsonl")[0]
    assert lambada["continuation"] == "signs" and lambada["context"].endswith("I don't care about")


def test_arc_labels_cover_numeric_and_five_choice_items(prepared: tuple[Path, dict]) -> None:
    rows = _rows(prepared[0] / "arc_easy.jsonl")
    assert {len(row["choices"]) for row in rows} == {3, 4, 5}
    assert all(0 <= row["label"] < len(row["choices"]) for row in rows)


def test_wikitext_articles_keep_every_token(prepared: tuple[Path, dict]) -> None:
    pages = _rows(prepared[0] / "wikitext.jsonl")
    assert pages[0]["title"] == "Robert Boulter"
    assert all(re.match(r"^ = [^=].* = \n", page["page"]) for page in pages)
    assert "\r" not in "".join(page["page"] for page in pages)
    # SOURCE.txt: 241,211 whitespace tokens in the test split, all of them inside some article.
    assert sum(len(page["page"].split()) for page in pages) == 241211


def test_output_is_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks"
    out.mkdir()
    (out / "stale.jsonl").write_text("old\n")
    summary = prepare_benchmarks(RAW_DATA_DIR, out, names=["piqa"])
    assert summary == {"piqa": {"file": "piqa.jsonl", "items": 1838}}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "piqa.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["benchmarks"]  # no temp or backup folder left


def test_malformed_inputs_are_all_reported_with_file_and_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "hellaswag").mkdir(parents=True)
    (raw / "hellaswag" / "hellaswag_val_full.txt").write_text("ctx\n7\na\nb\nc\nd\n")
    (raw / "lambada_openai").mkdir()
    (raw / "lambada_openai" / "lambada_openai.jsonl").write_text('{"context": "x", "continuation": "y"}\n{oops\n')
    out = tmp_path / "out"
    with pytest.raises(BenchmarkDataError) as error:
        prepare_benchmarks(raw, out, names=["hellaswag", "lambada", "piqa"])
    message = str(error.value)
    assert "hellaswag_val_full.txt:2" in message
    assert "lambada_openai.jsonl line 2" in message
    assert "valid-labels.lst" in message
    assert not out.exists()


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match="mmlu_pro"):
        prepare_benchmarks(RAW_DATA_DIR, tmp_path / "out", names=["mmlu_pro"])


def test_the_shared_suite_takes_lm_evals_prompts_and_mmlu_interleaves_its_subjects(prepared: tuple[Path, dict]) -> None:
    out, _ = prepared
    mmlu = _rows(out / "mmlu.jsonl")
    assert len({row["subject"] for row in mmlu[:57]}) == 57  # the first 57 items: one per subject
    assert len({row["subject"] for row in mmlu}) == 57 and all(row["label"] in range(4) for row in mmlu)
    copa = _rows(out / "copa.jsonl")[0]
    assert copa["query"] == "The man turned on the faucet therefore" and copa["label"] == 1
    boolq = _rows(out / "boolq.jsonl")[0]
    assert not boolq["query"].startswith("Passage:") and "\nQuestion: " in boolq["query"]
    assert boolq["choices"] == ["no", "yes"]
    winogrande = _rows(out / "winogrande.jsonl")[0]
    assert [context.split()[-1] for context in winogrande["contexts"]] == ["Sarah", "Maria"]
    assert winogrande["continuation"] == "always got the easier cases." and winogrande["label"] == 1
    truthful = _rows(out / "truthfulqa_mc1.jsonl")
    assert truthful[0]["choices"][0] == "Nothing in particular happens when you eat a pomegranate."
    assert all(row["label"] == 0 for row in truthful)


def test_a_malformed_shared_suite_row_names_its_file_and_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "winogrande").mkdir(parents=True)
    good = {"context_options": ["a", "b"], "continuation": "c", "gold": 0}
    lines = [json.dumps(good), json.dumps({**good, "gold": 2})]
    (raw / "winogrande" / "winogrande.jsonl").write_text("\n".join(lines) + "\n")
    (raw / "mmlu" / "test").mkdir(parents=True)
    (raw / "mmlu" / "test" / "x_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,E\n")
    with pytest.raises(BenchmarkDataError) as error:
        prepare_benchmarks(raw, tmp_path / "out", names=["winogrande", "mmlu"])
    assert "winogrande.jsonl:2" in str(error.value) and "x_test.csv:2" in str(error.value)
