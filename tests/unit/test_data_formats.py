"""Loading raw rows from every supported file format, and the errors bad files give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.lib.dataset import data_formats
from tasks.lib.dataset.data_formats import DataError, is_hub_id, load_located_rows, load_rows

ROWS = [{"prompt": "say hi", "completion": "hi"}, {"prompt": 'a "quoted" word', "completion": "ok"}]


def _write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in ROWS[:1]) + "\n\n" + json.dumps(ROWS[1]))
    assert load_rows(path) == ROWS
    assert [number for number, _ in load_located_rows(path)] == [1, 3]


@pytest.mark.parametrize("wrap", [lambda rows: rows, lambda rows: {"data": rows}])
def test_json_list_or_data_key(tmp_path, wrap):
    assert load_rows(_write(tmp_path / "d.json", json.dumps(wrap(ROWS)))) == ROWS


def test_csv_with_quoted_fields(tmp_path):
    path = _write(tmp_path / "d.csv", 'prompt,completion\nsay hi,hi\n"a ""quoted"" word",ok\n')
    assert load_rows(path) == ROWS
    assert [number for number, _ in load_located_rows(path)] == [2, 3]


def test_tsv_keeps_bare_quote_characters(tmp_path):
    path = _write(tmp_path / "d.tsv", 'label\tsentence\n0\tit \'s a "bad" film\n1\t" great\n')
    assert load_rows(path) == [
        {"label": "0", "sentence": 'it \'s a "bad" film'},
        {"label": "1", "sentence": '" great'},
    ]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    assert load_rows(str(tmp_path / "d.parquet")) == ROWS


def test_malformed_json_lines_are_all_reported_with_line_numbers(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": \n[1, 2]\n')
    with pytest.raises(DataError) as error:
        load_rows(path)
    message = str(error.value)
    assert f"{path} line 2: malformed JSON" in message
    assert f"{path} line 3: expected a JSON object" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n\n"),
        ("e.json", "[]"),
        ("e.json", ""),
        ("e.csv", ""),
        ("e.tsv", "a\tb\n"),
    ],
)
def test_empty_files(tmp_path, name, content):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError, match=r"no rows") as error:
        load_rows(path)
    assert path in str(error.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = _write(tmp_path / "latin.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"line 2: not valid UTF-8") as error:
        load_rows(path)
    assert path in str(error.value)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = _write(tmp_path / "d.tsv", "label\tsentence\n0\tfine\n1\ttoo\tmany\n0\n")
    with pytest.raises(DataError) as error:
        load_rows(path)
    assert f"{path} line 3: 3 fields, the header has 2" in str(error.value)
    assert f"{path} line 4: 1 fields" in str(error.value)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"unknown extension '\.xml'"):
        load_rows(_write(tmp_path / "d.xml", "<a/>"))


def test_hub_id_detection(tmp_path):
    assert is_hub_id("stanfordnlp/sst2")
    assert not is_hub_id("data/train.jsonl")
    assert not is_hub_id("just-a-name")
    (tmp_path / "org").mkdir()
    assert not is_hub_id(str(tmp_path / "org"))


def test_hub_failure_is_a_clear_data_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load data set 'org/missing' \(config None, split 'train'.*offline"):
        load_rows("org/missing")


def test_hub_rows_are_loaded_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake(dataset_id, name=None, split=None, revision=None):
        calls.append((dataset_id, name, split, revision))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_rows("org/name", hub_split="validation") == ROWS
    assert load_rows("org/name", "train", hub=data_formats.HubOptions("sst2", "v1.0")) == ROWS
    assert calls == [("org/name", None, "validation", None), ("org/name", "sst2", "train", "v1.0")]
    assert data_formats.location_word("org/name") == "row"


# ---------------------------------------------------------------- tables written by real tools


def test_header_less_csv_with_column_names_from_the_config(tmp_path):
    # AG News' train.csv shape: class index, title, description; no header line.
    path = _write(
        tmp_path / "ag.csv", '"3","Wall St. Bears","Short-sellers, Wall Street\'s dwindling band"\r\n"4","A, b","c"\r\n'
    )
    table = data_formats.TableOptions(header=False, columns=("label", "title", "text"))
    rows = load_located_rows(path, table=table)
    assert rows[0] == (
        1,
        {"label": "3", "title": "Wall St. Bears", "text": "Short-sellers, Wall Street's dwindling band"},
    )
    assert rows[1][1]["title"] == "A, b"  # quoted comma, CRLF line ends
    with pytest.raises(DataError, match="line 1: 3 fields, data.table.columns names 2"):
        load_located_rows(path, table=data_formats.TableOptions(header=False, columns=("label", "text")))


def test_pandas_written_tsv_with_minimal_quoting(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ['he said "hi"', "tab\tinside", "plain"], "label": ["a", "b", "c"]})
    path = tmp_path / "pandas.tsv"
    frame.to_csv(path, sep="\t", index=False)
    rows = load_rows(str(path), table=data_formats.TableOptions(quoting="minimal"))
    assert rows == frame.to_dict("records")
    with pytest.raises(DataError, match="pandas.tsv line 3"):  # read GLUE-style (no quoting), the tab splits a row
        load_rows(str(path))


def test_semicolon_csv_and_a_field_over_128_kib(tmp_path):
    long = "x" * (200 * 1024)
    path = _write(tmp_path / "eu.csv", f'prompt;completion\n"{long}";"ok"\nsay hi;hi\n')
    rows = load_rows(path, table=data_formats.TableOptions(delimiter=";"))
    assert len(rows[0]["prompt"]) == 200 * 1024 and rows[1] == {"prompt": "say hi", "completion": "hi"}


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"prompt": "one\u2028two", "completion": "a\x85b\u2029c"}, ROWS[0]]
    text = "\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\r\n"
    path = _write(tmp_path / "d.jsonl", text)
    assert load_rows(path) == rows
    assert [number for number, _ in load_located_rows(path)] == [1, 2]
