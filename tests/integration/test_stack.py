"""`qlora stack` for real on non-default ports: the UIs in a headless browser, a run with the stack, `stack down`,
a run without it, both in the one store the user opens next; a reused pid is never signalled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import write_tiny_config
from tests.integration.servers import BIN_DIR, free_port, model_server, wait_for

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _qlora(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN_DIR / "qlora"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _browser():
    """Headless Chromium from the Debian packages (`.ci/run` installs them)."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("QLORA_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        warnings.warn(
            "browser checks skipped: no chromium/chromedriver (apt-get install chromium chromium-driver)", stacklevel=2
        )
        return None
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def _page_shows(driver, url: str, texts: list[str], seconds: float = 90) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    try:
        WebDriverWait(driver, seconds).until(
            lambda d: all(text in d.find_element(By.TAG_NAME, "body").text for text in texts)
        )
    except Exception:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{url} did not show {texts} within {seconds:.0f}s; it showed:\n{body[:3000]}") from None


def test_stack_on_other_ports_then_no_stack(tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path) -> None:
    overrides = {"train.max_steps": 2, "tracking.uri": None, "tracking.artifact_location": None}
    config = str(write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides))
    prefect_port, mlflow_port = free_port(), free_port()
    env = dict(os.environ, QLORA_PREFECT_PORT=str(prefect_port), QLORA_MLFLOW_PORT=str(mlflow_port))
    for inherited in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(inherited, None)
    logs = [tmp_path / ".stack" / f"{name}.log" for name in ("prefect", "mlflow", "serve")]
    try:
        up = _qlora(["stack", "up", "--config", config], tmp_path, env)
        assert up.returncode == 0, up.stdout + up.stderr
        ui_settings = httpx.get(f"http://127.0.0.1:{prefect_port}/ui-settings", timeout=30).json()
        assert ui_settings["api_url"] == f"http://127.0.0.1:{prefect_port}/api"  # the UI calls its own server
        status = _qlora(["stack", "status"], tmp_path, env)
        assert status.returncode == 0 and status.stdout.count("answers") == 2, status.stdout

        with_stack = _qlora(["run", config], tmp_path, env)
        assert with_stack.returncode == 0, with_stack.stdout[-3000:] + with_stack.stderr[-3000:]
        _served_champion_answers_as_qlora_chat(
            tmp_path, dict(env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}")
        )

        driver = _browser()
        if driver is not None:
            try:
                prefect_ui, mlflow_ui = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
                wait_for(lambda: "qlora-on-demand" in _deployments(prefect_port), 120, "the deployments", logs)
                _page_shows(driver, f"{prefect_ui}/deployments", ["qlora-on-demand"])
                _page_shows(driver, f"{prefect_ui}/artifacts/key/tiny-report", ["tiny-report", "Flow run"])
                report = _newest_artifact(prefect_port, "tiny-report")
                _page_shows(driver, f"{prefect_ui}/artifacts/artifact/{report}", ["Registered", "tiny-sst2"])
                _page_shows(driver, f"{mlflow_ui}/#/models/tiny-sst2", ["Version 1", "champion"])
                # The version's page shows its model card; the pipeline's run lists the model and the version.
                _page_shows(driver, f"{mlflow_ui}/#/models/tiny-sst2/versions/1", ["Forgetting gate", "Serving"])
                parent = _pipeline_run(mlflow_port)
                run_page = f"{mlflow_ui}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
                _page_shows(driver, run_page, ["Logged models (1)", "merged_model", "Registered models\ntiny-sst2\nv1"])
                # The summary's "MLflow runs" link opens the runs table (MLflow 3's machine-learning view).
                runs_link = next(line for line in with_stack.stdout.splitlines() if line.startswith("MLflow runs:"))
                _page_shows(driver, runs_link.split()[-1], [parent.info.run_name])
            finally:
                driver.quit()

        stranger = subprocess.Popen(["sleep", "300"])  # a process that took over a pid the stack once had
        try:
            down = _qlora(["stack", "down"], tmp_path, env)
            assert down.returncode == 0 and "prefect" in down.stdout, down.stdout + down.stderr
            state = {"pid": stranger.pid, "started": 0.0, "command": ["prefect"]}
            (tmp_path / ".stack" / "prefect.json").write_text(json.dumps(state))
            assert "nothing was running" in _qlora(["stack", "down"], tmp_path, env).stdout
            assert stranger.poll() is None  # not signalled
        finally:
            stranger.kill()
        assert _qlora(["stack", "status"], tmp_path, env).returncode == 1
    finally:
        _qlora(["stack", "down"], tmp_path, env)

    without_stack = _qlora(["run", config], tmp_path, env)
    assert without_stack.returncode == 0, without_stack.stdout[-3000:] + without_stack.stderr[-3000:]

    store = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")  # what `make up` serves next time
    experiment = store.get_experiment_by_name("tiny")
    runs = store.search_runs([experiment.experiment_id], filter_string="tags.pipeline = 'qlora'")
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert sorted(version.version for version in store.search_model_versions("name='tiny-sst2'")) == [1, 2]


def _served_champion_answers_as_qlora_chat(tmp_path: Path, env: dict[str, str]) -> None:
    """`mlflow models serve` on the registered champion answers a chat request over HTTP with `qlora chat`'s
    greedy answer, honours max_tokens, and answers a bad request with 400."""
    with model_server("models:/tiny-sst2@champion", env, tmp_path / "model-server.log") as url:
        prompt = "Sentiment of: a fine film"
        chat_args = ["chat", "models:/tiny-sst2@champion", "--prompt", prompt, "--max-new-tokens", "8"]
        chat = _qlora(chat_args, tmp_path, env)
        assert chat.returncode == 0, chat.stderr[-3000:]
        request = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
        completion = httpx.post(f"{url}/invocations", json=request, timeout=60).raise_for_status().json()
        assert completion["object"] == "chat.completion", completion  # as from OpenAI's chat API
        assert completion["choices"][0]["message"]["content"] == chat.stdout.strip()
        assert completion["usage"]["completion_tokens"] <= 8
        short = httpx.post(f"{url}/invocations", json={**request, "max_tokens": 1}, timeout=60).raise_for_status()
        assert short.json()["usage"]["completion_tokens"] == 1
        bad = httpx.post(f"{url}/invocations", json={**request, "max_tokens": 0}, timeout=60)
        assert bad.status_code == 400 and "max_tokens must be at least 1" in bad.text  # the client's error, named
        over_long = {"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 8}
        refused = httpx.post(f"{url}/invocations", json=over_long, timeout=60)
        assert refused.status_code == 400 and "reads at most 512 tokens" in refused.text, refused.text


def _pipeline_run(mlflow_port: int):
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{mlflow_port}")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], filter_string="tags.pipeline = 'qlora'")[0]


def _deployments(port: int) -> str:
    response = httpx.post(f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=10)
    return " ".join(item["name"] for item in response.json())


def _newest_artifact(port: int, key: str) -> str:
    query = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    response = httpx.post(f"http://127.0.0.1:{port}/api/artifacts/filter", json=query, timeout=10)
    return response.raise_for_status().json()[0]["id"]
