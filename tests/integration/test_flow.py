"""The real Prefect flow end to end on the tiny model: MLflow runs, registry, artifacts, gate and failures."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from flows.cli import main as qlora
from flows.finetune import finetune
from tasks.pipeline_run import artifact_key
from tests.conftest import write_tiny_config

pytestmark = pytest.mark.integration

STEPS = {"train", "evaluate", "forgetting", "merge", "register"}
FAKE_TOKEN = "hf_integrationTestSecret0123456789"
FAKE_PASSWORD = "integration-Pa55word-xyz"
CONSOLE_NOISE = [
    "gemm_4bit_forward",  # bitsandbytes looking for the optional `kernels` package
    "autograd kernel was not registered",  # bitsandbytes' gradient-less CPU kernel used in training
    "is deprecated",  # transformers 5 deprecations (gradient_checkpointing) hit by our calls or peft's
    "pin_memory",  # torch's DataLoader on a machine without an accelerator
    "Warning:",  # any other Python warning
    "| WARNING |",  # any other library's warning through Prefect's console handler
]


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """A temporary Prefect server and database for this module's flow runs."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _registered_versions(tracking_uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return []


def _report(config_name: str) -> str | None:
    """The newest report artifact, read over the REST API as the UI does (the 3.8 client sends null paging)."""
    query = {"artifacts": {"key": {"any_": [artifact_key(config_name)]}}, "sort": "CREATED_DESC", "limit": 1}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=query, timeout=30)
    response.raise_for_status()
    artifacts = response.json()
    return artifacts[0]["data"] if artifacts else None


def _files_containing(root: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [path for path in root.rglob("*") if path.is_file() and data in path.read_bytes()]


def _prefect_database() -> Path:
    """The SQLite file of the test harness's Prefect server (flow-run parameters, logs, artifacts)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url.get_secret_value()
    return Path(url.split(":///", 1)[1])


def _leaks(root: Path, captured: str, secrets: list[str]) -> dict[str, list[str]]:
    """Where each secret appears: files under root (run folders, MLflow store and artifacts), the Prefect
    database (with its write-ahead log) and the captured console."""
    database = _prefect_database()
    places = [*root.rglob("*"), *database.parent.glob(f"{database.name}*")]
    found = {}
    for secret in secrets:
        hits = [str(path) for path in places if path.is_file() and secret.encode() in path.read_bytes()]
        hits += ["console"] if secret in captured else []
        if hits:
            found[secret] = hits
    return found


def test_flow_trains_evaluates_registers_and_reuses_base_scores(
    tmp_path: Path,
    tiny_model_dir: Path,
    benchmark_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", FAKE_PASSWORD)  # where credentials belong: the environment
    # A user's own multiple-choice benchmark scored beside the packaged ones.
    own = tmp_path / "regression.jsonl"
    items = [
        {"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1)], "answer": str(a + b)}
        for a in range(6)
        for b in (1, 2)
    ]
    own.write_text("".join(json.dumps(item) + "\n" for item in items))
    benchmarks = ["hellaswag", "arc_easy", "piqa", "lambada", "wikitext", "regression"]
    custom = {"regression": {"path": str(own), "kind": "multiple_choice"}}
    overrides = {"forgetting.benchmarks": benchmarks, "forgetting.custom": custom}
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    first = finetune(config_path=str(config_path), overrides=["lora.r=4"])

    assert first.train.global_step == 12 and first.train.trainable_params > 0
    assert Path(first.train.adapter_dir, "adapter_model.safetensors").is_file()
    assert set(first.evaluation.base) == set(first.evaluation.tuned) >= {"accuracy", "f1"}
    assert first.forgetting.passed and not first.forgetting.base_scores_cached and not first.evaluation.base_cached
    assert first.merge.fidelity.argmax_agreement >= 0.99
    assert first.registration.registered and first.registration.version == "1"
    assert set(first.registration.aliases) == {"champion", "challenger"}

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(first.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["outcome"] == "completed"
    assert parent.data.params["lora.r"] == "4"  # the override reached the run's params
    assert parent.data.tags["data_version"] == first.data.raw_version
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'"
    )
    assert {run.data.tags["step"] for run in children} == STEPS
    train_run = next(run for run in children if run.data.tags["step"] == "train")
    assert {"eval_loss", "train.loss", "trainable_params", "tokens_per_second"} <= set(train_run.data.metrics)
    # MLflow's lineage: data inputs -> train run -> adapter (a logged model) -> registered version.
    adapter = client.get_logged_model(first.train.adapter_model_id)
    assert adapter.source_run_id == train_run.info.run_id and adapter.model_type == "peft-lora-adapter"
    assert {metric.key for metric in adapter.metrics} >= {"trainable_params", "global_step", "tokens_per_second"}
    assert adapter.tags["data_version"] == first.data.raw_version and adapter.params["lora.r"] == "4"
    assert adapter.tags["gate.verdict"] == first.forgetting.gate.verdict
    assert "adapter_model.safetensors" in {item.path for item in client.list_logged_model_artifacts(adapter.model_id)}
    assert str(client.get_model_version_by_alias("tiny-sst2", "champion").version) == "1"

    # The gate's paired statistics reach MLflow and the registered version.
    forgetting_run = next(run for run in children if run.data.tags["step"] == "forgetting")
    gate_metrics = {"gate_verdict", "gate.hellaswag.delta", "gate.hellaswag.ci_low", "gate.hellaswag.p_value"}
    assert gate_metrics <= set(forgetting_run.data.metrics)
    assert forgetting_run.data.metrics["gate.wikitext.n"] == 10  # documents, paired
    assert forgetting_run.data.metrics["gate.regression.n"] == 4  # forgetting.limit items of the user's file
    assert "| regression | acc | 4 |" in first.forgetting.markdown
    version = client.get_model_version("tiny-sst2", "1")
    assert version.tags["gate.verdict"] == first.forgetting.gate.verdict
    assert version.tags["gate.regression"] == first.forgetting.gate.rows[-1].verdict != "fail"
    assert version.tags["round_trip"] == "verified" and version.tags["pipeline_run_id"] == first.run_id
    assert version.tags["test_fingerprint"] == first.evaluation.test_fingerprint
    assert version.tags["adapter_model_id"] == adapter.model_id
    assert version.tags["task.metric"] == first.evaluation.primary_metric and len(version.tags) <= 25
    # The model card: the version's description and README.md beside the weights; the details as an artifact.
    card = Path(first.merge.merged_dir, "README.md").read_text()
    assert version.description == card and "hellaswag" in card and "mlflow models serve" in card
    register_run = next(run for run in children if run.data.tags["step"] == "register")
    details_file = client.download_artifacts(register_run.info.run_id, "registration/version_details.json")
    details = json.loads(Path(details_file).read_text())
    assert (
        details["gate.hellaswag"].split(":")[0] in {"pass", "inconclusive", "uninformative"}
        and "version.torch" in details
    )
    # The pipeline's run leads to its model: the logged model's source run and the version's run.
    assert version.run_id == first.mlflow_run_id
    logged = client.search_logged_models(
        [parent.info.experiment_id], filter_string=f"source_run_id='{parent.info.run_id}'"
    )
    assert [f"models:/{model.model_id}" for model in logged] == [version.source]

    # MLflow as its users expect: headline metrics on the parent run (Compare), data sets as inputs.
    headline = {"task.delta", "forgetting.hellaswag.delta", "forgetting.worst_accuracy_delta_pts", "gate.passed"}
    assert headline | {"merge.merged_vs_adapter_max", "registered"} <= set(parent.data.metrics)
    inputs = {item.dataset.name: item for item in parent.inputs.dataset_inputs}
    assert set(inputs) == {"tiny-train", "tiny-validation", "tiny-test"}
    assert {item.dataset.digest for item in inputs.values()} == {first.data.raw_version[:36]}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The run a user opens says what it did (its description) and holds the gate's report.
    assert parent.data.tags["mlflow.note.content"].startswith("registered tiny-sst2 v1 (challenger, champion)")
    assert "forgetting gate" in parent.data.tags["mlflow.note.content"]
    gate_report = Path(client.download_artifacts(parent.info.run_id, "gate_report.md")).read_text()
    assert gate_report == first.forgetting.markdown
    assert "forgetting.png" in {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}

    assert qlora(["check-run", first.run_dir]) == 0  # what CI runs on the demo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for target in ("models:/tiny-sst2@champion", first.run_dir):
        assert qlora(["chat", target, "--prompt", "Sentiment of: a fine film", "--max-new-tokens", "4"]) == 0

    report = _report("tiny")
    assert report is not None and "Registered `tiny-sst2` version **1**" in report and "hellaswag" in report

    second = finetune(config_path=str(config_path), overrides=["lora.r=4"])
    assert second.data.reused and second.forgetting.base_scores_cached
    # The base's answers on the same test items come from the cache too, the same answers.
    assert second.evaluation.base_cached and second.evaluation.base_scores == first.evaluation.base_scores
    # Same seed, same data: the same score, and a tie keeps the incumbent champion.
    assert second.registration.version == "2" and second.registration.aliases == ["challenger"]
    assert str(client.get_model_version_by_alias("tiny-sst2", "champion").version) == "1"
    assert client.get_model_version("tiny-sst2", "2").tags["champion_comparison"].startswith("v1's stored results")
    # The first of the 52 confirmations these test items allow, at alpha / 52; the registry keeps count.
    look = json.loads(client.get_model_version("tiny-sst2", "2").tags["test_ledger"])
    assert look["look"] == 1 and look["horizon"] == 52 and look["level"] == pytest.approx(0.05 / 52)
    registered = client.get_registered_model("tiny-sst2")
    ledger = json.loads(registered.tags[f"test_ledger.{look['test_set']}"])
    assert ledger["looks"] == 1 and ledger["horizon"] == 52 and ledger["recent_runs"] == [second.run_id]
    assert "gain of" in client.get_model_version("tiny-sst2", "2").tags["promotion_reason"]  # what it can confirm
    # The registered model says what it is, how versions are promoted and how to serve it.
    assert "How a version gets here" in registered.description and "mlflow models serve" in registered.description
    assert registered.tags["task.metric"] and registered.tags["base_model"]

    # Scheduled retraining: nothing that changes the outcome changed since the last attempt -> skip (also when
    # only where results go changed); new data -> train.
    unchanged = finetune(
        config_path=str(config_path),
        overrides=["lora.r=4", f"output_dir={tmp_path / 'elsewhere'}"],
        skip_if_unchanged=True,
    )
    assert unchanged.skipped and unchanged.train is None and second.run_id in unchanged.reason
    assert "registered v2" in unchanged.reason
    data_file = tmp_path / "sst2_slice.tsv"
    data_file.write_text("".join(data_file.read_text().splitlines(keepends=True)[:-20]))
    new_data = finetune(config_path=str(config_path), overrides=["lora.r=4"], skip_if_unchanged=True)
    assert not new_data.skipped and new_data.data.raw_version != first.data.raw_version
    assert new_data.registration.version == "3"

    # A challenger evaluated on other test items: the champion is re-scored on the challenger's items. Its
    # benchmarks are looked at every 2 of their 4 items: with the loose tiny gate every row that can decide does
    # so at the first look, and only those 2 items of the tuned model and of the base (a fresh cache) are scored.
    fresh_cache = tmp_path / "fresh_cache"
    overrides = ["lora.r=4", "evaluation.max_items=8", "forgetting.look_every=2", f"forgetting.cache_dir={fresh_cache}"]
    fewer_items = finetune(config_path=str(config_path), overrides=overrides)
    tags = client.get_model_version("tiny-sst2", fewer_items.registration.version).tags
    assert tags["champion_comparison"].endswith("re-scored on this run's items") and tags["promotion.n"] == "8"
    looked = [row for row in fewer_items.forgetting.gate.rows if row.looks is not None]
    assert looked and all(row.looks == 1 and row.n == 2 and row.max_items == 4 for row in looked)
    assert all(row.verdict == "pass" and "stopped at look 1 of 2" in row.reason for row in looked)
    assert "Group-sequential" in fewer_items.forgetting.markdown and not fewer_items.forgetting.base_scores_cached
    stored = [json.loads(path.read_text())["scores"]["items"] for path in fresh_cache.glob("items-*.json")]
    assert sorted(len(items) for items in stored) == sorted(row.n for row in fewer_items.forgetting.gate.rows)

    # No secret anywhere: run folders, MLflow store and artifacts, the Prefect database, the console.
    captured = capfd.readouterr()
    assert _leaks(tmp_path, captured.out + captured.err, [FAKE_TOKEN, FAKE_PASSWORD]) == {}

    # A password put in the tracking URI is refused before Prefect or MLflow see it, without echoing it.
    refused = qlora(["run", str(config_path), "--set", f"tracking.uri=http://ci:{FAKE_PASSWORD}@127.0.0.1:9"])
    captured = capfd.readouterr()
    assert refused == 2 and "MLFLOW_TRACKING_PASSWORD" in captured.err
    assert _leaks(tmp_path, captured.out + captured.err, [FAKE_PASSWORD]) == {}


def test_failed_gate_registers_nothing(tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path) -> None:
    """A random tiny model cannot improve on the task: a gate that demands improvement must block it."""
    config_path = write_tiny_config(
        tmp_path, tiny_model_dir, benchmark_data_dir, {"gate.require_task_improvement": True, "train.max_steps": 4}
    )
    result = finetune(config_path=str(config_path))

    assert not result.forgetting.passed and result.forgetting.gate.task.verdict != "pass"
    assert result.forgetting.gate.rows == [] and "not run" in result.forgetting.markdown  # no work wasted
    assert result.merge is None and not Path(result.run_dir, "merged").exists()
    assert not result.registration.registered and "gate" in result.registration.reason
    assert _registered_versions(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny-sst2") == []
    parent = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert parent.data.tags["gate"] == "failed"
    assert qlora(["check-run", str(Path(result.run_dir).parent)]) == 4  # CI would fail on this run

    # The schedule does not retrain the same failing setup every week: it skips, saying why.
    scheduled = finetune(config_path=str(config_path), skip_if_unchanged=True)
    assert scheduled.skipped and "gate failed, nothing registered" in scheduled.reason


def test_corrupted_data_fails_the_flow_with_the_step_error(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir)
    data_file = tmp_path / "sst2_slice.tsv"
    lines = data_file.read_bytes().splitlines()
    lines[5] = b"\xff\xfe broken \x80 bytes\t1"
    data_file.write_bytes(b"\n".join(lines) + b"\n")

    state = finetune(config_path=str(config_path), return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert "sst2_slice.tsv" in str(error) and "line 6" in str(error)
    # The flow run's state in the UI is the error's message itself, not "Flow run encountered an exception".
    assert state.message.startswith("DataError: ") and "line 6" in state.message
    query = {"logs": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}}
    logs = httpx.post(f"{PREFECT_API_URL.value()}/logs/filter", json=query, timeout=30).raise_for_status().json()
    assert sum("Traceback" in log["message"] for log in logs) <= 1  # the failing task's, not the flow's too
    assert not (tmp_path / "processed" / "tiny").exists()
    assert _registered_versions(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny-sst2") == []


def test_registry_lock_is_a_prefect_global_concurrency_limit() -> None:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from tasks.io.locks import registry_lock, registry_lock_name

    with registry_lock("locked-model"):
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(registry_lock_name("locked-model"))
        assert limit.limit == 1 and limit.active and limit.active_slots == 1
        with pytest.raises(TimeoutError):  # a second run waits while the first holds the slot
            with concurrency(registry_lock_name("locked-model"), timeout_seconds=2, strict=True):
                pass
    with registry_lock("locked-model", timeout_seconds=5):  # released: the next run gets it at once
        pass

    notes: list[str] = []
    with registry_lock("locked-model", holder="pipeline run A"):  # a waiter says who holds it, while it waits
        with pytest.raises(TimeoutError):
            with registry_lock("locked-model", timeout_seconds=3, note=notes.append, note_every=1):
                pass
    assert notes and all("held by pipeline run A for" in note for note in notes), notes


def test_rerun_of_a_finished_run_reuses_its_steps_and_a_changed_resume_is_refused(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, {"train.max_steps": 4})
    first = finetune(config_path=str(config_path), run_id="rerun-me")
    adapter = Path(first.train.adapter_dir, "adapter_model.safetensors")
    weights = adapter.read_bytes()

    again = finetune(config_path=str(config_path), run_id="rerun-me")
    assert adapter.read_bytes() == weights and again.train.global_step == 4  # not trained a step further
    assert again.registration.version == first.registration.version  # no second version either
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(first.mlflow_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.mlflow_run_id}'"
    )
    assert sorted(run.data.tags["step"] for run in children) == sorted(STEPS)  # each step ran once
    assert parent.info.status == "FINISHED"

    # Every step is also a verb on the run directory, calling the same step function.
    for verb in ("evaluate", "merge", "forgetting", "register"):
        assert qlora([verb, first.run_dir]) == 0, verb
    assert Path(first.run_dir, "merged", "config.json").is_file()
    assert len(_registered_versions(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny-sst2")) == 1

    with pytest.raises(Exception, match="cannot resume: config keys changed: lora.r"):
        finetune(config_path=str(config_path), run_id="rerun-me", overrides=["lora.r=4"])


def test_concurrent_runs_with_different_data_settings_each_evaluate_on_their_own_split(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    """Two `qlora run` processes at once on a fresh store (as two workers of a pool would run them), same name,
    other data."""
    import os
    import subprocess
    import sys

    from tasks.evaluate import evaluated_items_fingerprint
    from tasks.lib.config import load_config
    from tasks.lib.evaluation.task_eval import load_split
    from tasks.lib.run.refs import PipelineResult

    overrides = {"train.max_steps": 2, "evaluation.max_items": 40}  # every test item of each split
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides)
    settings = (["data.max_rows=200"], ["data.max_rows=120"])
    # Started together on a fresh SQLite store: one process at a time creates its schema (tasks/io/tracking.py).
    assert not (tmp_path / "mlflow.db").exists()
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    qlora_bin = str(Path(sys.executable).parent / "qlora")
    processes = [
        subprocess.Popen(
            [qlora_bin, "run", str(config_path), *[f"--set={item}" for item in setting]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for setting in settings
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    for output in outputs:  # a user reads this console: no third-party noise (tasks/lib/core/quiet.py), no warnings
        noise = [line for line in output.splitlines() if any(mark in line for mark in CONSOLE_NOISE)]
        assert noise == [], noise
    run_dirs = [output.split("run directory:")[1].split()[0] for output in outputs]
    runs = [PipelineResult.model_validate_json(Path(d, "pipeline_result.json").read_text()) for d in run_dirs]

    folders = [Path(run.data.processed_dir) for run in runs]
    assert folders[0] != folders[1] and {folder.parent for folder in folders} == {tmp_path / "processed" / "tiny"}
    for run, folder, setting in zip(runs, folders, settings, strict=True):
        config = load_config(str(config_path), setting)
        rows = load_split(folder, "test")[: config.evaluation.max_items]
        assert run.evaluation.test_fingerprint == evaluated_items_fingerprint(rows, config)
        assert run.evaluation.n_items == len(rows)
    assert runs[0].evaluation.n_items > runs[1].evaluation.n_items

    killed_preparation = tmp_path / "processed" / "tiny" / ".0123abcd.tmp-x1y2"  # what a kill mid-publish leaves
    killed_preparation.mkdir()
    assert qlora(["clean-data", str(config_path), "--set", "data.max_rows=200"]) == 0
    assert list((tmp_path / "processed" / "tiny").iterdir()) == [folders[0]]


def test_racing_registrations_leave_the_better_model_champion(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two runs register at once, both better than the champion, one much better. Each does what
    `tasks.register.run_registration` does under the Prefect lock: read the champion, decide, register, alias.
    Without the lock both would read the old champion and the last writer would win, whichever it is."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tasks.io.locks import registry_lock
    from tasks.io.registry import PIPELINE_RUN_TAG, champion, register_merged_model
    from tasks.lib.gate.promotion import decide_promotion, decode_correct, encode_correct

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    n = 200
    scores = {
        "old": [i < 40 for i in range(n)],
        "good": [i < 110 for i in range(n)],
        "best": [i < 190 for i in range(n)],
    }
    both_inside = threading.Barrier(2, timeout=3)

    def register(label: str) -> None:
        with registry_lock("race-model"):
            current = champion("race-model")
            incumbent = decode_correct(current[1]["test_items_correct"]) if current else None
            if label != "old":
                try:
                    both_inside.wait()  # both pass at once only if the lock let them in together
                except threading.BrokenBarrierError:
                    pass
            time.sleep(0.5)
            decision = decide_promotion(True, scores[label], incumbent)
            with mlflow.start_run(experiment_id=experiment_id) as run:
                tags = {PIPELINE_RUN_TAG: label, "label": label, "test_items_correct": encode_correct(scores[label])}
                register_merged_model(tiny_model_dir, "race-model", run.info.run_id, tags, decision)

    register("old")
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(register, ["good", "best"]))

    client = MlflowClient()
    best = client.get_model_version_by_alias("race-model", "champion")
    assert best.tags["label"] == "best"
    assert len(client.search_model_versions("name='race-model'")) == 3


def test_the_flow_trains_with_two_processes_and_logs_their_history(tmp_path: Path, tiny_model_dir: Path) -> None:
    overrides = {"train.num_processes": 2, "train.batch_size": 4, "forgetting.enabled": False}
    config_path = write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "no-benchmarks", overrides)
    result = finetune(config_path=str(config_path), overrides=["registry.enabled=false"])
    assert result.train.global_step == 12 and result.train.best_eval_loss < result.train.first_eval_loss
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train_run = client.get_run(result.train.mlflow_run_id)
    assert train_run.data.tags["num_processes"] == "2"
    history = client.get_metric_history(result.train.mlflow_run_id, "train.loss")
    assert sorted(metric.step for metric in history) == [1, 2, 4, 6, 8, 10, 12]
    assert (Path(result.run_dir) / "adapter" / "adapter_model.safetensors").is_file()


def test_a_better_free_text_challenger_replaces_its_champion_through_the_registry(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Free text is scored per item (ROUGE-L). What the register step does, on a real MLflow registry: the
    champion's graded scores ride on its version's tags, the next run reads them back for the same test items
    (`champion_scores_on`) and compares; a challenger better on the same items takes `champion`, one no better
    stays `challenger`. Before graded scores, no free-text challenger could ever be promoted (exact-match pairs)."""
    import numpy as np

    from tasks.io.registry import PIPELINE_RUN_TAG, register_merged_model
    from tasks.lib.config import RunConfig
    from tasks.lib.gate.decision import task_row
    from tasks.lib.gate.promotion import decide_promotion, encode_scores
    from tasks.lib.run.refs import TaskEvalRef
    from tasks.register import TEST_FINGERPRINT_TAG, TEST_SCORES_TAG, champion_scores_on

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("free-text", artifact_location=(tmp_path / "artifacts").as_uri())
    config = RunConfig.model_validate(
        {
            "name": "ft",
            "model": {"name_or_path": str(tiny_model_dir)},
            "data": {"path": "x.jsonl"},
            "registry": {"model_name": "ft"},
        }
    )
    rng = np.random.default_rng(6)
    difficulty = rng.beta(2, 3, 120)
    rouge = {
        "champion": np.clip(difficulty + rng.normal(0, 0.1, 120), 0, 1),
        "better": np.clip(difficulty + 0.08 + rng.normal(0, 0.1, 120), 0, 1),
        "no better": np.clip(difficulty + rng.normal(0, 0.1, 120), 0, 1),
    }

    def register(label: str) -> list[str]:
        scores = [float(value) for value in rouge[label]]
        evaluation = TaskEvalRef(
            base={}, tuned={}, primary_metric="rougeL", n_items=120, markdown="", mlflow_run_id="",
            test_fingerprint="items-v1", base_scores=[0.0] * 120, tuned_scores=scores,
            task=task_row([0.0] * 120, scores, config.gate, "rougeL"),
        )  # fmt: skip
        incumbent, _ = champion_scores_on(config, evaluation, [])
        decision = decide_promotion(True, scores, incumbent)
        tags = {PIPELINE_RUN_TAG: label, TEST_FINGERPRINT_TAG: "items-v1", TEST_SCORES_TAG: encode_scores(scores)}
        with mlflow.start_run(experiment_id=experiment_id) as run:
            return register_merged_model(tiny_model_dir, "ft", run.info.run_id, tags, decision).aliases

    assert register("champion") == ["challenger", "champion"]  # the first one, no champion yet
    assert register("better") == ["challenger", "champion"]
    assert register("no better") == ["challenger"]
    client = MlflowClient()
    assert client.get_model_version_by_alias("ft", "champion").tags[PIPELINE_RUN_TAG] == "better"
    assert "betting" in client.get_model_version("ft", "2").tags["promotion_reason"]
