"""Real servers for the integration tests: free ports, waiting with the logs on failure, a Prefect server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT

BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, seconds: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(1)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}\n{tails}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def prefect_server(home: Path, **settings: str) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`prefect server start` on a free port; yields its API URL, an environment pointing at it, and its log."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        # Served deployments and workers look for scheduled runs every second instead of every 10 s.
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        **settings,
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    log = home.parent / f"{home.name}-server.log"
    port = api.rsplit(":", 1)[1].removesuffix("/api")
    server = start([str(BIN_DIR / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], env, log)
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 180, "the Prefect server", [log])
        yield api, env, log
    finally:
        stop([server])


@contextmanager
def model_server(model_uri: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """`mlflow models serve` on a registered model, started as the README says (the venv's bin on PATH); yields
    its URL once it answers /ping."""
    port = free_port()
    env = dict(env, PATH=f"{BIN_DIR}:{env.get('PATH', '')}")
    command = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "-p", str(port)],
        cwd=log.parent,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/ping", timeout=5).status_code == 200, 180, "the model server", [log])
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # a server that died on its own has no group left
            os.killpg(server.pid, signal.SIGTERM)  # the server and the uvicorn workers it started
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
