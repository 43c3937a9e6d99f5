"""One forgetting benchmark's results as the gate reads them: what scoring returns, the cache stores and Ray hands
back, typed (light: pydantic only)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


class BenchmarkScores(BaseModel):
    """A benchmark scored on some items: the metric it is judged on, lm-eval's aggregates, and per item the result
    on that metric (0/1 right or wrong; [log-likelihood, words or bytes] for a perplexity document), the item's
    number of choices (multiple choice) and its group (MMLU's subject)."""

    metric: str | None = None  # None: the benchmark's packaged headline metric
    values: dict[str, float] = {}  # aggregates: the judged metric, its stderr, any other lm-eval reported
    n: float = 0.0  # items scored
    items: dict[str, Any] = {}  # doc id -> result on `metric`; empty when lm-eval logged no samples
    choices: dict[str, int] | None = None
    chance: float | None = None  # guessing accuracy (multiple choice); from `choices` where they are known
    groups: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        """The flat form (every aggregate beside "metric", "items", ...): lm-eval's rows, score-cache files written
        before this type, and the rows tests write by hand."""
        if not isinstance(data, dict):
            return data
        if data.get("items") is None:
            data = {**data, "items": {}}
        if "values" in data:
            return data
        fields = set(cls.model_fields)
        aggregates = {
            key: float(value)
            for key, value in data.items()
            if key not in fields and isinstance(value, int | float) and not isinstance(value, bool)
        }
        return {**{key: value for key, value in data.items() if key in fields}, "values": aggregates}


def as_benchmark_scores(rows: dict[str, Any]) -> dict[str, BenchmarkScores]:
    """{name: results} with every row typed (a row already typed is kept as it is)."""
    return {name: BenchmarkScores.model_validate(row) for name, row in rows.items()}
