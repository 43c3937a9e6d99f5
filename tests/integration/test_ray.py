"""QLoRA training on a real one-machine Ray cluster (`ray start --head` on 127.0.0.1, 2 CPUs), joined by address:
Ray Train's two gloo workers follow the single-process loss curve, and the flow trains through Ray to a registered
version after one of its workers is killed mid-training (Ray replaces it; training resumes from the checkpoint)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from tasks.io.launch import LaunchError
from tasks.io.models import load_base_model, load_tokenizer
from tasks.io.ray_cluster import ray_training
from tasks.lib.config import load_config
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.dataset.prepare import prepare_dataset
from tasks.lib.run.refs import PipelineResult
from tasks.lib.training.trainer import train_adapter
from tests.conftest import write_tiny_config
from tests.integration.test_ddp import TOLERANCE, _losses

pytestmark = pytest.mark.integration

RAY_OVERRIDES = {"train.engine": "ray", "ray.num_workers": 2, "ray.cpus_per_worker": 1}


def _kill_group(pid: int, sig: int) -> None:
    """Signal a process group that may already be gone (the head exits on SIGTERM, its group with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs, in its own process group (stopped with it, other clusters untouched)."""
    import ray

    port, temp_dir = _free_port(), tmp_path_factory.mktemp("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    log = (temp_dir / "head.log").open("w")
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        # Without token authentication (Ray 2.60's default; with RAY_AUTH_MODE=token a client needs the token
        # before it imports ray): this head serves only this test module.
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        probe = subprocess.run(
            [str(ray_bin), "status", f"--address={address}"],
            env=dict(os.environ, RAY_AUTH_MODE="disabled"),
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            break
        if time.monotonic() > deadline or head.poll() is not None:
            _kill_group(head.pid, signal.SIGKILL)
            pytest.fail(f"the Ray head did not come up on {address}: {(temp_dir / 'head.log').read_text()[-3000:]}")
        time.sleep(1)
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _kill_group(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(head.pid, signal.SIGKILL)  # the head's GCS, raylet and workers share its process group
        head.wait()


def test_two_ray_workers_follow_the_single_process_loss_curve(
    tmp_path: Path, tiny_model_dir: Path, ray_address: str
) -> None:
    overrides = {"train.max_steps": 8, "train.eval_steps": 4, "train.save_steps": 4, "train.logging_steps": 1}
    config = load_config(write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "unused", overrides))
    tokenizer = load_tokenizer(config.model)
    data_dir = tmp_path / "prepared"
    prepare_dataset(config, tokenizer, data_dir)
    single = train_adapter(
        config, lambda: load_base_model(config.model, config.quantization), tokenizer, data_dir, tmp_path / "one"
    )
    on_ray = load_config(
        write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "unused", overrides),
        [f"{key}={value}" for key, value in RAY_OVERRIDES.items()]
        + [f"train.batch_size={config.train.batch_size // 2}", f"ray.address={ray_address}"],
    )
    parallel = ray_training(on_ray, data_dir, tmp_path / "two", [])

    one, two = _losses(single.log_history), _losses(parallel.log_history)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=TOLERANCE), (step, one, two)
    assert one[8] < one[1]
    assert parallel.best_eval_loss == pytest.approx(single.best_eval_loss, rel=TOLERANCE)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_flow_trains_on_ray_through_a_killed_worker_to_a_registered_version(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from flows.finetune import finetune

    overrides = {**RAY_OVERRIDES, "train.batch_size": 4, "ray.address": ray_address}
    # Paths relative to the project, run from another directory: the workers get the config resolved at load.
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides, relative=True)
    monkeypatch.chdir(tmp_path.parent)
    # A worker of this job (a job-level runtime env reaches the workers the head starts) dies once, after step 6
    # and the checkpoint at step 4: Ray replaces the worker group, which resumes from that checkpoint.
    marker = tmp_path / "killed-once"
    ray.init(
        address=ray_address,
        runtime_env={"env_vars": {"QLORA_FAILPOINT": "train.step-6", "QLORA_FAILPOINT_MARKER": str(marker)}},
    )
    try:
        with prefect_test_harness(server_startup_timeout=60):
            result = finetune(config_path=str(config_path.relative_to(tmp_path.parent)))
    finally:
        ray.shutdown()
    assert marker.is_file(), "a worker was killed"
    assert result.train.global_step == 12 and result.train.resumed_from_step == 4
    assert result.registration.registered and result.registration.version == "1"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train_run = client.get_run(result.train.mlflow_run_id)
    assert train_run.info.status == "FINISHED" and train_run.data.tags["engine"] == "ray"
    steps = client.search_runs([result.mlflow_experiment_id], "tags.step = 'train'")
    assert len(steps) == 1, "one training run in MLflow, not one per attempt"
    history = client.get_metric_history(result.train.mlflow_run_id, "train.loss")
    assert max(metric.step for metric in history) == 12


def test_benchmarks_scored_on_two_ray_workers_equal_the_local_scorer_item_by_item(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path, ray_address: str
) -> None:
    from tasks.io.models import load_scored_model
    from tasks.io.ray_cluster import score_on_ray
    from tasks.lib.general_benchmarks.benchmark_scoring import score_benchmarks

    overrides = {"forgetting.engine": "ray", "ray.num_workers": 2, "ray.address": ray_address}
    config = load_config(write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides))
    on_ray = score_on_ray(config, None)
    local = score_benchmarks(config, load_scored_model(config, None), load_tokenizer(config.model))
    assert list(on_ray) == list(local) == list(config.forgetting.benchmarks)
    for name in local:
        ray_row, local_row = on_ray[name], local[name]
        assert list(ray_row.items) == list(local_row.items) and len(local_row.items) == local_row.n > 0, name
        for item, value in local_row.items.items():  # 0/1 per item, or [log-likelihood, weight] for perplexity
            assert ray_row.items[item] == pytest.approx(value, rel=1e-5), (name, item)
        assert ray_row.values == pytest.approx(local_row.values, rel=1e-5), name
        rest = {"items", "values"}  # the judged metric, the guessing level, subjects
        assert ray_row.model_dump(exclude=rest) == local_row.model_dump(exclude=rest), name


def test_the_group_sequential_check_on_ray_reads_the_same_items_as_here_a_block_at_a_time(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path, ray_address: str
) -> None:
    """With looks every 2 of 4 items, base and merged model scored on Ray workers look by look: the same items, the
    same results as in the pipeline's process, and no more items than the looks read (a fresh base cache each)."""
    from tasks.forgetting import gate_looks, score_base_and_tuned
    from tasks.lib.gate.decision import decide

    overrides = {
        "forgetting.engine": "ray",
        "ray.num_workers": 2,
        "ray.address": ray_address,
        "forgetting.look_every": 2,
        "forgetting.cache_dir": str(tmp_path / "ray_cache"),
    }
    on_ray = load_config(write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides))
    here = on_ray.model_copy(
        update={"forgetting": on_ray.forgetting.model_copy(update={"engine": "local", "cache_dir": str(tmp_path)})}
    )
    checked = {}
    for config in (on_ray, here):
        looks = gate_looks(config)
        assert looks

        def decide_now(base: dict, tuned: dict, config=config, looks=looks):  # noqa: ANN202
            return decide(base, tuned, config.gate, None, {}, looks)

        checked[config.forgetting.engine] = score_base_and_tuned(config, str(tiny_model_dir), decide_now, looks)
    (ray_base, ray_tuned, ray_cached), (base, tuned, cached) = checked["ray"], checked["local"]
    assert not ray_cached and not cached
    assert list(ray_base) == list(base) == list(tuned) == list(ray_tuned)
    for name in base:
        for ray_side, side in ((ray_base, base), (ray_tuned, tuned)):
            assert list(ray_side[name].items) == list(side[name].items), name
            for item, value in side[name].items.items():
                assert ray_side[name].items[item] == pytest.approx(value, rel=1e-5), (name, item)
    looked = [name for name in base if name in looks]
    assert looked and all(len(base[name].items) == looks[name].every for name in looked)  # decided at look 1
    assert len(looks["hellaswag"].order) == 4 and looks["hellaswag"].every == 2


def test_an_error_a_new_worker_would_repeat_ends_the_ray_run_at_once(
    tmp_path: Path, tiny_model_dir: Path, ray_address: str
) -> None:
    """The model folder vanishes after the checks: every worker fails loading it, and Ray does not replace them."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    overrides = {**RAY_OVERRIDES, "ray.address": ray_address, "ray.max_failures": 3}
    config = load_config(write_tiny_config(tmp_path, model, tmp_path / "unused", overrides))
    data_dir = tmp_path / "prepared"
    prepare_dataset(config, load_tokenizer(config.model), data_dir)
    shutil.rmtree(model)
    with pytest.raises(LaunchError, match="not retried .*OSError") as raised:
        ray_training(config, data_dir, tmp_path / "run", [])
    assert "\n" not in str(raised.value)
    causes = RunLayout.of(tmp_path / "run").launch_fatal_error.read_text().splitlines()
    assert len(causes) == 2, causes  # one per worker of one group: no replacement group was started


def test_the_documented_ray_block_registers_from_outside_the_project(tmp_path: Path, ray_address: str) -> None:
    """docs/scaling.md's one-machine cluster, run as written on configs/tiny.yaml from another directory (its
    `ray stop` stops this module's cluster too, so this test comes last in the module)."""
    from tests.integration.test_docs import HOW, RAY, doc_env, doc_project, run_block, shell_blocks

    (block,) = [block for block in shell_blocks() if HOW.get(block.key) == RAY]
    project = doc_project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_block(block, project, doc_env(tmp_path), cwd=elsewhere)
    (result_file,) = (project / "runs" / "tiny").glob("*/pipeline_result.json")
    result = PipelineResult.model_validate_json(result_file.read_text())
    assert result.registration.registered
    train_run = MlflowClient(tracking_uri=f"sqlite:///{project / 'runs' / 'tiny' / 'mlflow.db'}").get_run(
        result.train.mlflow_run_id
    )
    assert train_run.data.tags["engine"] == "ray"
