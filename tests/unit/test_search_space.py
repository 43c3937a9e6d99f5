"""The sweep's pure logic: suggested values, outcomes read from headline metrics, the Pareto front, the best
gate-passing trial, the table and plot; and the sweep section's validation."""

from __future__ import annotations

import optuna
import pytest

from tasks.lib.config import ConfigError, SweepParameter, config_from_dict
from tasks.lib.training.search_space import (
    TrialOutcome,
    best_feasible,
    outcome_from_metrics,
    overrides_for,
    pareto_front,
    pareto_plot,
    suggest,
    trials_markdown,
)


def _outcome(number: int, loss: float | None, worst: float | None, passed: bool, state="completed") -> TrialOutcome:
    return TrialOutcome(
        number,
        {"train.learning_rate": 1e-4 * (number + 1)},
        f"t{number}",
        state,
        validation_loss=loss,
        task_gain=None if loss is None else 50.0 - 10.0 * loss,
        worst_forgetting=worst,
        gate_passed=passed,
        verdict="passed" if passed else "failed",
    )


def test_suggested_values_follow_the_declared_space():
    parameters = {
        "train.learning_rate": SweepParameter(low=1e-5, high=1e-3, log=True),
        "lora.r": SweepParameter(low=4, high=32),
        "lora.dropout": SweepParameter(choices=[0.0, 0.05]),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), parameters)
        assert 1e-5 <= values["train.learning_rate"] <= 1e-3
        assert isinstance(values["lora.r"], int) and 4 <= values["lora.r"] <= 32
        assert values["lora.dropout"] in (0.0, 0.05)
    assert overrides_for({"lora.r": 8, "data.replay.path": "a b"}) == ["lora.r=8", 'data.replay.path="a b"']


def test_outcome_is_read_from_the_pipeline_runs_headline_metrics():
    outcome = outcome_from_metrics(
        TrialOutcome(3, {}, "t3"),
        {
            "train.best_eval_loss": 0.71,
            "task.delta": 12.5,
            "task.ci_low": 4.0,
            "task.ci_high": 20.0,
            "forgetting.worst_accuracy_delta_pts": -1.5,
            "gate.passed": 1.0,
        },
        {"outcome": "completed", "gate": "passed"},
    )
    assert outcome.feasible and outcome.task_ci == (4.0, 20.0) and outcome.worst_forgetting == -1.5
    assert outcome.validation_loss == 0.71
    failed = outcome_from_metrics(
        TrialOutcome(4, {}, "t4"),
        {"train.best_eval_loss": 0.5, "task.delta": 30.0, "gate.passed": 0.0},
        {"outcome": "completed", "gate": "failed"},
    )
    assert not failed.feasible


def test_best_is_the_lowest_validation_loss_among_gate_passing_trials_only():
    outcomes = [
        _outcome(0, 1.0, -1.0, True),
        _outcome(1, 0.4, -9.0, False),  # learned most, forgot too much: never chosen
        _outcome(2, 0.8, -3.0, True),
        _outcome(3, None, None, False, state="failed"),
    ]
    assert best_feasible(outcomes).number == 2
    # The test items never choose: a larger task gain on them does not outrank a lower validation loss.
    outcomes[0].task_gain = 99.0
    assert best_feasible(outcomes).number == 2
    assert best_feasible([outcomes[1], outcomes[3]]) is None
    assert pareto_front(outcomes) == {0, 1, 2}
    assert pareto_front([_outcome(0, 1.0, -1.0, True), _outcome(1, 1.5, -2.0, True)]) == {0}


def test_table_shows_every_trial_and_the_plot_is_written(tmp_path):
    outcomes = [_outcome(0, 1.0, -1.0, True), _outcome(1, 0.4, -9.0, False), _outcome(2, None, None, False, "failed")]
    markdown = trials_markdown(outcomes, outcomes[0], "Registered as m v1.")
    assert "| #0 (best) |" in markdown and "| #1 |" in markdown and "failed" in markdown
    assert "Registered as m v1." in markdown
    assert pareto_plot(outcomes, tmp_path / "p.png").stat().st_size > 1000


def _raw(sweep: dict) -> dict:
    return {
        "name": "t",
        "model": {"name_or_path": "org/m"},
        "data": {"path": "d.jsonl"},
        "registry": {"model_name": "t"},
        "sweep": sweep,
    }


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"parameters": {"train.learning_rat": {"low": 1e-5, "high": 1e-3}}}, "not a config key"),
        ({"parameters": {"registry.model_name": {"choices": ["a"]}}}, "does not change what a trial learns"),
        ({"parameters": {"lora.r": {"low": 8, "high": 4}}}, "must be below"),
        ({"parameters": {"lora.r": {"low": 4, "high": 8}}, "sampler": "grid"}, "needs choices"),
        ({"parameters": {"train.learning_rate": {"low": 0, "high": 1e-3, "log": True}}}, "log-scale"),
    ],
)
def test_bad_sweep_sections_are_refused_naming_the_problem(sweep, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_raw(sweep))
