"""The base-score cache: a hit skips compute, any change in what the scores depend on misses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.io.score_cache import benchmark_key_parts, cache_key, cached_benchmark_rows, get_or_compute
from tasks.lib.config.benchmark_names import OUTPUT_FILES
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.general_benchmarks.benchmark_scoring import plan_benchmarks

NAMES = ["hellaswag", "wikitext"]


class CountingCompute:
    """A compute() that returns fresh scores and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"hellaswag": {"acc_norm": 0.25 + self.calls / 100}, "wikitext": {"word_perplexity": 30.0}}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    for name in ["hellaswag", "arc_easy", "wikitext"]:
        (folder / OUTPUT_FILES[name]).write_text(f'{{"id": "{name}-0"}}\n', encoding="utf-8")
    return folder


@pytest.fixture
def key_of(data_dir: Path) -> Callable[..., dict]:
    def make(model_version: str = "v1", names: list[str] = NAMES, limit: int | None = 100) -> dict:
        return benchmark_key_parts(model_version, plan_benchmarks(names, data_dir, limit, limit))

    return make


def test_second_call_with_same_key_is_cached(tmp_path: Path, key_of: Callable[..., dict]) -> None:
    compute = CountingCompute()
    first, first_cached = get_or_compute(key_of(), compute, tmp_path / "cache")
    # The key is rebuilt from the files, as a new run would.
    second, second_cached = get_or_compute(key_of(), compute, tmp_path / "cache")
    assert compute.calls == 1
    assert (first_cached, second_cached) == (False, True)
    assert second == first


def test_key_records_every_input(key_of: Callable[..., dict]) -> None:
    parts = key_of(names=["wikitext", "hellaswag"])
    assert parts["model_version"] == "v1"
    assert {item["limit"] for item in parts["benchmarks"].values()} == {100}
    assert parts["lm_eval"]
    assert list(parts["benchmarks"]) == ["hellaswag", "wikitext"]
    assert parts["benchmarks"]["hellaswag"]["data_md5"] != parts["benchmarks"]["wikitext"]["data_md5"]
    assert parts["benchmarks"]["hellaswag"]["task_yaml_md5"] != parts["benchmarks"]["wikitext"]["task_yaml_md5"]


def test_benchmark_order_does_not_matter(tmp_path: Path, key_of: Callable[..., dict]) -> None:
    compute = CountingCompute()
    get_or_compute(key_of(names=["hellaswag", "wikitext"]), compute, tmp_path / "cache")
    _, cached = get_or_compute(key_of(names=["wikitext", "hellaswag"]), compute, tmp_path / "cache")
    assert cached
    assert compute.calls == 1


@pytest.mark.parametrize(
    "change",
    [
        {"model_version": "v2"},
        {"names": ["hellaswag"]},
        {"names": ["hellaswag", "arc_easy", "wikitext"]},
        {"limit": 50},
        {"limit": None},
    ],
)
def test_changed_key_recomputes(tmp_path: Path, key_of: Callable[..., dict], change: dict) -> None:
    compute = CountingCompute()
    get_or_compute(key_of(), compute, tmp_path / "cache")
    scores, cached = get_or_compute(key_of(**change), compute, tmp_path / "cache")
    assert not cached
    assert compute.calls == 2
    assert scores["hellaswag"]["acc_norm"] == pytest.approx(0.27)  # the second compute's result


def test_changed_data_content_recomputes(tmp_path: Path, data_dir: Path, key_of: Callable[..., dict]) -> None:
    compute = CountingCompute()
    get_or_compute(key_of(), compute, tmp_path / "cache")
    (data_dir / OUTPUT_FILES["wikitext"]).write_text('{"id": "wikitext-0", "page": "edited"}\n', encoding="utf-8")
    _, cached = get_or_compute(key_of(), compute, tmp_path / "cache")
    assert not cached
    assert compute.calls == 2
    # ... and the new content is now cached in turn.
    _, cached = get_or_compute(key_of(), compute, tmp_path / "cache")
    assert cached
    assert compute.calls == 2


def test_data_of_unselected_benchmark_does_not_matter(data_dir: Path, key_of: Callable[..., dict]) -> None:
    before = cache_key(key_of())
    (data_dir / OUTPUT_FILES["arc_easy"]).write_text('{"id": "changed"}\n', encoding="utf-8")
    assert cache_key(key_of()) == before


@pytest.mark.parametrize("content", ["{not json", "", '["a", "list"]', '{"scores": {"x": 1}}'])
def test_corrupted_cache_file_is_recomputed(tmp_path: Path, key_of: Callable[..., dict], content: str) -> None:
    compute = CountingCompute()
    cache_dir = tmp_path / "cache"
    get_or_compute(key_of(), compute, cache_dir)
    (cache_file,) = cache_dir.glob("*.json")
    cache_file.write_text(content, encoding="utf-8")

    scores, cached = get_or_compute(key_of(), compute, cache_dir)
    assert not cached
    assert compute.calls == 2
    assert scores["hellaswag"]["acc_norm"] == pytest.approx(0.27)  # the second compute's result
    # The broken file was replaced by a good one.
    _, cached = get_or_compute(key_of(), compute, cache_dir)
    assert cached
    assert compute.calls == 2


def test_failed_compute_leaves_no_cache(tmp_path: Path, key_of: Callable[..., dict]) -> None:
    def boom() -> dict:
        raise RuntimeError("scoring failed")

    with pytest.raises(RuntimeError):
        get_or_compute(key_of(), boom, tmp_path / "cache")
    compute = CountingCompute()
    _, cached = get_or_compute(key_of(), compute, tmp_path / "cache")
    assert not cached
    assert compute.calls == 1


def test_the_bases_task_answers_are_cached_and_are_those_of_the_adapter_model_with_its_adapter_off(
    tiny_config_file: Path,
) -> None:
    """`qlora score-base` (the plain 4-bit base) and the evaluate step (the adapter model, adapter disabled) answer
    the same; the second call reads the cache; other settings or other items are another key."""
    from peft import LoraConfig, get_peft_model

    from tasks.data import run_prepare
    from tasks.evaluate import base_task_key_parts, score_base_task
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.config import load_config
    from tasks.lib.evaluation.task_eval import evaluate_task, load_split

    config = load_config(tiny_config_file)
    data = run_prepare(config)
    first, cached = score_base_task(config, data)
    assert not cached and first.n_items == config.evaluation.max_items
    again, cached = score_base_task(config, data)
    assert cached and again == first

    rows = load_split(Path(data.processed_dir), "test")
    base = load_base_model(config.model, config.quantization, for_training=False)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    with model.disable_adapter():
        assert evaluate_task(model, load_tokenizer(config.model), rows, config.evaluation) == first

    key = base_task_key_parts(config, rows)
    other_settings = load_config(tiny_config_file, ["evaluation.max_new_tokens=5"])
    assert base_task_key_parts(other_settings, rows) != key
    assert base_task_key_parts(config, list(reversed(rows))) != key


class ItemCompute:
    """A compute(plans) that scores each drawn item as right when its index is even, and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, list[int] | None]] = []

    def __call__(self, plans: list) -> dict:
        self.asked.append({plan.name: plan.drawn for plan in plans})
        rows = {}
        for plan in plans:
            keys = [str(index) for index in plan.drawn] if plan.drawn is not None else ["0"]
            rows[plan.name] = BenchmarkScores(
                metric="acc_norm",
                values={"acc_norm": 0.5},
                items={key: int(key) % 2 == 0 for key in keys},
                choices={key: 4 for key in keys},
            )
        return rows


def _drawn(data_dir: Path, indices: list[int]) -> list:
    (plan,) = plan_benchmarks(["hellaswag"], data_dir, None, None)
    return [plan.model_copy(update={"drawn": indices, "limit": len(indices)})]


def test_drawn_items_are_cached_one_by_one_and_only_the_new_ones_are_scored(tmp_path: Path, data_dir: Path) -> None:
    """A run that reads more items than the last scores only those; a run that reads fewer scores nothing; the
    results are the ones first computed, restricted to the items asked for."""
    compute, cache = ItemCompute(), tmp_path / "cache"
    first, cached = cached_benchmark_rows(_drawn(data_dir, [1, 2, 3]), "v1", 1024, compute, cache)
    assert not cached and compute.asked == [{"hellaswag": [1, 2, 3]}]
    more, cached = cached_benchmark_rows(_drawn(data_dir, [0, 1, 2, 3, 4]), "v1", 1024, compute, cache)
    assert not cached and compute.asked[-1] == {"hellaswag": [0, 4]}
    assert more["hellaswag"].items == {"0": True, "1": False, "2": True, "3": False, "4": True}
    assert more["hellaswag"].values["acc_norm"] == pytest.approx(0.6) and more["hellaswag"].chance == pytest.approx(
        0.25
    )
    fewer, cached = cached_benchmark_rows(_drawn(data_dir, [2, 4]), "v1", 1024, compute, cache)
    assert cached and len(compute.asked) == 2
    assert fewer["hellaswag"].items == {"2": True, "4": True} and fewer["hellaswag"].n == 2
    # Another model version shares nothing.
    _, cached = cached_benchmark_rows(_drawn(data_dir, [2, 4]), "v2", 1024, compute, cache)
    assert not cached and compute.asked[-1] == {"hellaswag": [2, 4]}


def test_a_benchmark_not_drawn_is_cached_whole_by_its_limit(tmp_path: Path, data_dir: Path) -> None:
    compute, cache = ItemCompute(), tmp_path / "cache"
    plans = plan_benchmarks(["hellaswag"], data_dir, 10, 10)
    cached_benchmark_rows(plans, "v1", 1024, compute, cache)
    _, cached = cached_benchmark_rows(plans, "v1", 1024, compute, cache)
    assert cached and len(compute.asked) == 1
    _, cached = cached_benchmark_rows(plan_benchmarks(["hellaswag"], data_dir, 20, 20), "v1", 1024, compute, cache)
    assert not cached and len(compute.asked) == 2


def test_an_unreadable_item_store_is_scored_again(tmp_path: Path, data_dir: Path) -> None:
    compute, cache = ItemCompute(), tmp_path / "cache"
    cached_benchmark_rows(_drawn(data_dir, [1, 2]), "v1", 1024, compute, cache)
    (store,) = cache.glob("items-*.json")
    store.write_text("{not json", encoding="utf-8")
    rows, cached = cached_benchmark_rows(_drawn(data_dir, [1, 2]), "v1", 1024, compute, cache)
    assert not cached and compute.asked[-1] == {"hellaswag": [1, 2]} and rows["hellaswag"].n == 2


def test_each_look_of_the_forgetting_check_says_where_it_is_and_how_long_is_left():
    """Scoring in looks takes minutes on a CPU: each look says its number, the items it scores and, from the
    second on, an upper bound on the time left."""
    from tasks.forgetting import LookProgress
    from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan

    lines: list[str] = []
    progress = LookProgress(max_looks=4, say=lines.append)
    block = [BenchmarkPlan(name="hellaswag", metric="acc_norm", limit=None, drawn=list(range(200)))]
    progress.started(block)
    progress.started(block)
    first, second = lines
    assert "look 1 of at most 4" in first and "hellaswag 200 items" in first and "left" not in first
    assert "look 2 of at most 4" in second and "s left" in second
