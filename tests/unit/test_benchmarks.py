"""Benchmark scoring through lm-eval: task YAMLs + converted data checked against a table-driven fake LM
with known answers, then a real run on the tiny model (plain and PEFT-wrapped)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from tasks.lib.config.benchmark_names import HEADLINE, HIGHER_IS_BETTER
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.general_benchmarks.benchmark_data import prepare_benchmarks
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkError, evaluate_lm, run_benchmarks
from tests.conftest import RAW_DATA_DIR

FIXTURES = RAW_DATA_DIR / "llmfoundry_test_fixtures"
ALL = ["hellaswag", "arc_easy", "piqa", "lambada", "wikitext"]


@pytest.fixture(autouse=True)
def _skip_env_report(monkeypatch: pytest.MonkeyPatch) -> None:
    # simple_evaluate ends with torch's collect_env (pip/nvidia-smi subprocesses, ~5 s per call);
    # it only decorates the results dict, which run_benchmarks does not read.
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw-format benchmark folders with 4 items each: llm-foundry fixtures where they exist, else the
    first items of the real files (ARC) and the starts of the first 3 WikiText articles."""
    raw = tmp_path_factory.mktemp("tiny-raw")
    (raw / "hellaswag").mkdir()
    lines = []
    for item in _jsonl(FIXTURES / "hellaswag_small.jsonl"):
        lines += [item["query"], str(item["gold"]), *item["choices"]]
    (raw / "hellaswag" / "hellaswag_val_full.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (raw / "piqa").mkdir()
    piqa = _jsonl(FIXTURES / "piqa_small.jsonl")
    (raw / "piqa" / "valid.jsonl").write_text(
        "".join(json.dumps({"goal": i["query"], "sol1": i["choices"][0], "sol2": i["choices"][1]}) + "\n" for i in piqa)
    )
    (raw / "piqa" / "valid-labels.lst").write_text("".join(f"{i['gold']}\n" for i in piqa))
    (raw / "lambada_openai").mkdir()
    (raw / "lambada_openai" / "lambada_openai.jsonl").write_text((FIXTURES / "lambada_small.jsonl").read_text())
    (raw / "arc_easy").mkdir()
    arc = (RAW_DATA_DIR / "arc_easy" / "ARC-Easy-test.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (raw / "arc_easy" / "ARC-Easy-test.jsonl").write_text("\n".join(arc) + "\n", encoding="utf-8")
    (raw / "wikitext2_raw").mkdir()
    lines = (RAW_DATA_DIR / "wikitext2_raw" / "wiki.test.raw").read_bytes().decode("utf-8").split("\r\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line)][:3]
    kept = [line for start in starts for line in lines[start : start + 3]]  # heading + 2 paragraphs each
    (raw / "wikitext2_raw" / "wiki.test.raw").write_bytes("".join(f"{line}\r\n" for line in kept).encode())
    return raw


@pytest.fixture(scope="module")
def tiny_data_dir(tiny_raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-bench") / "benchmarks"
    summary = prepare_benchmarks(tiny_raw_dir, out)
    assert {name: entry["items"] for name, entry in summary.items()} == {
        "hellaswag": 4,
        "arc_easy": 4,
        "piqa": 4,
        "lambada": 4,
        "wikitext": 3,
    }
    return out


class TableLM(LM):
    """Answers only the requests it was told to expect: an unexpected prompt raises KeyError."""

    def __init__(self, loglikelihoods: dict[tuple[str, str], tuple[float, bool]], rolling: dict[str, float]):
        super().__init__()
        self.loglikelihoods, self.rolling = loglikelihoods, rolling

    def loglikelihood(self, requests):
        return [self.loglikelihoods[request.args] for request in requests]

    def loglikelihood_rolling(self, requests):
        return [self.rolling[request.args[0]] for request in requests]

    def generate_until(self, requests):
        raise NotImplementedError


def test_task_yamls_score_known_answers_exactly(tiny_data_dir: Path) -> None:
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    table: dict[tuple[str, str], tuple[float, bool]] = {}
    # The fake prefers one choice per item; it is the gold one for the first `correct` items only.
    correct = {"hellaswag": 1, "arc_easy": 2, "piqa": 3}
    prompts = {
        "hellaswag": lambda row: row["query"],
        "arc_easy": lambda row: f"Question: {row['query']}\nAnswer:",
        "piqa": lambda row: f"Question: {row['query']}\nAnswer:",
    }
    for name, count in correct.items():
        for index, row in enumerate(_jsonl(tiny_data_dir / f"{name}.jsonl")):
            pick = row["label"] if index < count else (row["label"] + 1) % len(row["choices"])
            for k, choice in enumerate(row["choices"]):
                table[(prompts[name](row), " " + choice)] = (-0.01 if k == pick else -100.0, False)
    # LAMBADA: the last word is the greedy continuation for items 0 and 2; every word has likelihood 1/3.
    for index, row in enumerate(_jsonl(tiny_data_dir / "lambada.jsonl")):
        table[(row["context"], " " + row["continuation"])] = (-math.log(3.0), index in (0, 2))
    # WikiText: log-likelihood -log(7) per original word, so word perplexity is exactly 7.
    rolling = {
        wikitext_detokenizer(row): -math.log(7.0) * len(re.split(r"\s+", row["page"]))
        for row in _jsonl(tiny_data_dir / "wikitext.jsonl")
    }

    scores = evaluate_lm(TableLM(table, rolling), ALL, tiny_data_dir, limit=None)

    for name, count in correct.items():
        assert scores[name].values["acc"] == pytest.approx(count / 4)
        assert scores[name].values["acc_norm"] == pytest.approx(count / 4)
        assert scores[name].n == 4
    assert scores["lambada"].values["acc"] == pytest.approx(0.5)
    assert scores["lambada"].values["perplexity"] == pytest.approx(3.0)
    assert scores["wikitext"].values["word_perplexity"] == pytest.approx(7.0)
    assert scores["wikitext"].n == 3


def test_limit_takes_the_first_items(tiny_data_dir: Path) -> None:
    rows = _jsonl(tiny_data_dir / "piqa.jsonl")
    # Right on items 0-1, wrong on 2-3: the first two items alone score 1.0.
    table = {
        (f"Question: {row['query']}\nAnswer:", " " + choice): (
            (-0.01, False) if (k == row["label"]) == (i < 2) else (-100.0, False)
        )
        for i, row in enumerate(rows)
        for k, choice in enumerate(row["choices"])
    }
    assert evaluate_lm(TableLM(table, {}), ["piqa"], tiny_data_dir, limit=2)["piqa"].values["acc"] == 1.0
    assert evaluate_lm(TableLM(table, {}), ["piqa"], tiny_data_dir, limit=4)["piqa"].values["acc"] == 0.5


def _check_in_range(scores: dict[str, BenchmarkScores], names: list[str], items: int) -> None:
    for name in names:
        value = scores[name].values[HEADLINE[name]]
        assert math.isfinite(value), (name, value)
        if HIGHER_IS_BETTER[HEADLINE[name]]:
            assert 0.0 <= value <= 1.0
        else:
            assert value >= 1.0
        assert scores[name].n == items


def test_run_benchmarks_on_the_tiny_model(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.train()
    scores = run_benchmarks(model, tokenizer, ALL, tiny_data_dir, limit=4, batch_size=8)
    assert set(scores) == set(ALL)
    _check_in_range(scores, ["hellaswag", "arc_easy", "piqa", "lambada"], 4)
    assert math.isfinite(scores["wikitext"].values["word_perplexity"]) and scores["wikitext"].n == 3
    assert 0.0 <= scores["hellaswag"].values["acc_norm_stderr"] <= 0.5
    assert math.isfinite(scores["lambada"].values["perplexity"])
    assert model.training  # the caller's mode is restored

    fewer_documents = run_benchmarks(
        model, tokenizer, ["piqa", "wikitext"], tiny_data_dir, limit=4, batch_size=8, perplexity_limit=1
    )
    assert fewer_documents["piqa"].n == 4 and fewer_documents["wikitext"].n == 1


def test_run_benchmarks_accepts_a_peft_model_on_a_4bit_base(tiny_model_dir: Path, tiny_data_dir: Path) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lib.config import LoraConfig, QuantizationConfig
    from tasks.lib.modeling.loading import bnb_config, peft_lora_config

    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=bnb_config(QuantizationConfig()), device_map="cpu", dtype=torch.float32
    )
    model = get_peft_model(base, peft_lora_config(LoraConfig(r=4, alpha=8)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = run_benchmarks(model, tokenizer, ["piqa", "lambada"], tiny_data_dir, limit=2, batch_size=4)
    assert set(scores) == {"piqa", "lambada"}
    _check_in_range(scores, ["piqa", "lambada"], 2)


def test_unknown_benchmark_and_missing_data_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError) as error:
        evaluate_lm(TableLM({}, {}), ["no_such_task", "piqa", "mmlu"], tmp_path, limit=1)
    assert "unknown benchmark 'no_such_task'" in str(error.value)
    assert str(tmp_path / "piqa.jsonl") in str(error.value) and "dvc pull data/raw/mmlu.dvc" in str(error.value)


def test_a_users_own_benchmarks_of_every_kind_score_with_their_settings(
    tmp_path: Path, tiny_model_dir: Path, tiny_data_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lib.config import BenchmarkSettings, CustomBenchmark
    from tasks.lib.general_benchmarks.benchmark_scoring import plan_benchmarks

    def write(name: str, rows: list[dict]) -> str:
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return str(tmp_path / name)

    choice = write(
        "mc.jsonl", [{"question": f"{i} + 1 =", "options": [str(i + 1), "x", "y"], "gold": 0} for i in range(6)]
    )
    cont = write("cont.jsonl", [{"prompt": "The capital of France is", "target": " Paris"}] * 3)
    text = write("text.jsonl", [{"text": "A plain paragraph of text. " * 20}, {"text": "Another one, shorter."}])
    # An lm-eval task YAML of the user's, its data on local files (how any lm-eval task runs offline).
    write("sciq_local.jsonl", [{"question": "Water boils at", "a": "100 C", "b": "10 C", "label": 0}] * 5)
    (tmp_path / "sciq_local.yaml").write_text(
        "task: sciq_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f'    test: "{tmp_path / "sciq_local.jsonl"}"\noutput_type: multiple_choice\ntest_split: test\n'
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "{{[a, b]}}"\n'
        "metric_list:\n  - metric: acc\n",
        encoding="utf-8",
    )
    custom = {
        "mine_mc": CustomBenchmark(path=choice, kind="multiple_choice"),
        "mine_cont": CustomBenchmark(path=cont, kind="continuation"),
        "mine_text": CustomBenchmark(path=text, kind="perplexity"),
        "sciq_local": CustomBenchmark(path=str(tmp_path / "sciq_local.yaml"), kind="lm_eval"),
    }
    settings = {"mine_mc": BenchmarkSettings(limit=5, metric="acc_norm"), "piqa": BenchmarkSettings(limit=3)}
    names = ["piqa", *custom]
    plans = plan_benchmarks(names, tiny_data_dir, 4, 2, custom, settings)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = run_benchmarks(model, tokenizer, plans, tiny_data_dir, limit=4, batch_size=8)

    assert {name: scores[name].n for name in names} == {
        "piqa": 3,
        "mine_mc": 5,
        "mine_cont": 3,
        "mine_text": 2,
        "sciq_local": 4,
    }
    assert scores["mine_mc"].metric == "acc_norm" and scores["mine_mc"].chance == pytest.approx(1 / 3)
    assert set(scores["mine_mc"].items.values()) <= {0.0, 1.0}
    assert scores["mine_cont"].metric == "acc" and scores["mine_cont"].chance is None
    assert scores["mine_text"].metric == "word_perplexity"
    assert all(len(item) == 2 for item in scores["mine_text"].items.values())  # [log-likelihood, words]
    assert scores["sciq_local"].metric == "acc" and len(scores["sciq_local"].items) == 4


def test_mmlu_items_carry_their_subject_and_the_gate_sums_subjects_to_the_row(
    tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lib.config import GateConfig
    from tasks.lib.gate.decision import decide

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = run_benchmarks(model, tokenizer, ["mmlu"], benchmark_data_dir, limit=60, batch_size=16)
    assert len(set(base["mmlu"].groups.values())) == 57  # interleaved: the first 57 items span every subject
    assert set(base["mmlu"].groups) == set(base["mmlu"].items) and base["mmlu"].chance == 0.25
    flipped = {"mmlu": base["mmlu"].model_copy(update={"items": {k: 1.0 - v for k, v in base["mmlu"].items.items()}})}
    row = decide(base, flipped, GateConfig()).rows[0]
    assert sum(group.gains for group in row.groups) == row.gains and sum(g.losses for g in row.groups) == row.losses
    assert row.gains + row.losses == 60 and sum(group.n for group in row.groups) == 60


def test_items_are_drawn_seeded_per_benchmark_and_scored_where_drawn(
    tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lib.general_benchmarks.benchmark_scoring import draw_items, plan_benchmarks

    first = draw_items("hellaswag", 10042, 400, seed=0)
    assert first == draw_items("hellaswag", 10042, 400, seed=0) and first == sorted(set(first)) and len(first) == 400
    assert first != draw_items("hellaswag", 10042, 400, seed=1) and first != draw_items("piqa", 10042, 400, seed=0)
    assert draw_items("copa", 100, 100, seed=0) is None and draw_items("copa", 100, None, seed=0) is None
    # Spread over the file (HellaSwag's activities run in blocks), not its first 4%.
    assert len({index // 1000 for index in first if index < 10000}) == 10  # in every 1,000-item block

    plans = plan_benchmarks(["piqa", "wikitext"], benchmark_data_dir, 6, 2, sample="random", seed=3)
    assert [len(plan.drawn) for plan in plans] == [6, 2]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = run_benchmarks(model, tokenizer, plans, benchmark_data_dir, limit=6, batch_size=8)
    for plan in plans:
        assert list(scores[plan.name].items) == [str(index) for index in plan.drawn], plan.name
