"""The local stack in one command: Prefect server, MLflow server and the deployment server, on 127.0.0.1.

`qlora stack up` starts what is not running, `qlora stack down` stops it, `qlora stack status` tells.
State (pids, logs, the URLs) lives in .stack/; `stack_env()` lets other commands find the servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STACK_DIR = Path(".stack")
PREFECT_PORT = int(os.environ.get("QLORA_PREFECT_PORT", "4200"))
MLFLOW_PORT = int(os.environ.get("QLORA_MLFLOW_PORT", "5000"))


def _urls() -> dict[str, str]:
    return {
        "prefect_ui": f"http://127.0.0.1:{PREFECT_PORT}",
        "prefect_api": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "mlflow": f"http://127.0.0.1:{MLFLOW_PORT}",
    }


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(name: str) -> bool:
    pid_file = STACK_DIR / f"{name}.pid"
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def _start(name: str, command: list[str], env: dict[str, str]) -> None:
    if _alive(name):
        return
    log = open(STACK_DIR / f"{name}.log", "ab")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=Path.cwd()
    )
    (STACK_DIR / f"{name}.pid").write_text(str(process.pid))


def _wait(url: str, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        time.sleep(1)
    raise RuntimeError(f"{what} did not answer at {url} within {seconds:.0f}s; see {STACK_DIR}/*.log")


def stack_env() -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI for a running local stack, or {} when it is down."""
    urls = _urls()
    env = {}
    if _healthy(f"{urls['prefect_api']}/health"):
        env["PREFECT_API_URL"] = urls["prefect_api"]
    if _healthy(f"{urls['mlflow']}/health"):
        env["MLFLOW_TRACKING_URI"] = urls["mlflow"]
    return env


def up(config_path: str = "configs/demo.yaml") -> dict[str, str]:
    STACK_DIR.mkdir(exist_ok=True)
    urls = _urls()
    env = dict(os.environ, PREFECT_HOME=str(Path(STACK_DIR, "prefect").resolve()))
    bin_dir = Path(sys.executable).parent
    _start(
        "prefect",
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(PREFECT_PORT)],
        env,
    )
    _start(
        "mlflow",
        [
            str(bin_dir / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(MLFLOW_PORT),
            "--backend-store-uri",
            "sqlite:///mlruns.db",
            "--artifacts-destination",
            "mlartifacts",
            "--workers",
            "1",
        ],
        env,
    )
    _wait(f"{urls['prefect_api']}/health", "Prefect server")
    _wait(f"{urls['mlflow']}/health", "MLflow server")
    serve_env = dict(env, PREFECT_API_URL=urls["prefect_api"], MLFLOW_TRACKING_URI=urls["mlflow"])
    _start("serve", [str(bin_dir / "qlora"), "serve", config_path], serve_env)
    (STACK_DIR / "urls.json").write_text(json.dumps(urls, indent=2))
    return urls


def down() -> list[str]:
    stopped = []
    for name in ("serve", "mlflow", "prefect"):
        pid_file = STACK_DIR / f"{name}.pid"
        if not pid_file.is_file():
            continue
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            stopped.append(name)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    return stopped


def status() -> dict[str, bool]:
    return {name: _alive(name) for name in ("prefect", "mlflow", "serve")}
