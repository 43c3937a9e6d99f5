"""The local stack in one command: Prefect server, MLflow server and the deployment server, on 127.0.0.1.

`qlora stack up` starts what is not running, `qlora stack down` stops it, `qlora stack status` tells.
State (pids, logs, the URLs) lives in .stack/; `stack_env()` lets other commands find the servers.
Ports: QLORA_PREFECT_PORT (4200) and QLORA_MLFLOW_PORT (5000).

A process is signalled only when it is still the one we started (same pid *and* same start time, so a pid the
system reused for another program is left alone). The MLflow server keeps runs in `mlruns.db` and artifacts in
`mlartifacts/` as plain `file://` locations, the same store `qlora run` falls back to without the stack: going
from the stack to no stack (and back) keeps one history.
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

import psutil

from tasks.lib.config.release_config import LOCAL_ARTIFACT_ROOT, LOCAL_TRACKING_STORE

STACK_DIR = Path(".stack")
SERVICES = ("prefect", "mlflow", "serve")
BACKEND_STORE = f"sqlite:///{LOCAL_TRACKING_STORE}"
ARTIFACT_ROOT = LOCAL_ARTIFACT_ROOT


def ports() -> dict[str, int]:
    return {
        "prefect": int(os.environ.get("QLORA_PREFECT_PORT", "4200")),
        "mlflow": int(os.environ.get("QLORA_MLFLOW_PORT", "5000")),
    }


def urls() -> dict[str, str]:
    port = ports()
    return {
        "prefect_ui": f"http://127.0.0.1:{port['prefect']}",
        "prefect_api": f"http://127.0.0.1:{port['prefect']}/api",
        "mlflow": f"http://127.0.0.1:{port['mlflow']}",
    }


def health_urls() -> dict[str, str]:
    found = urls()
    return {"prefect": f"{found['prefect_api']}/health", "mlflow": f"{found['mlflow']}/health"}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _state_file(name: str) -> Path:
    return STACK_DIR / f"{name}.json"


def _ours(name: str) -> psutil.Process | None:
    """The process we started for `name`, if it still runs: the pid alone may have been reused."""
    try:
        state = json.loads(_state_file(name).read_text())
        process = psutil.Process(state["pid"])
        if abs(process.create_time() - state["started"]) < 0.01 and process.is_running():
            return process
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return None


def _start(name: str, command: list[str], env: dict[str, str]) -> None:
    if _ours(name) is not None:
        return
    log = open(STACK_DIR / f"{name}.log", "ab")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=Path.cwd()
    )
    started = psutil.Process(process.pid).create_time()
    state = {"pid": process.pid, "started": started, "command": command}
    _state_file(name).write_text(json.dumps(state, indent=2))


def _wait(name: str, url: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if _ours(name) is None:
            raise RuntimeError(f"the {name} server exited while starting; see {STACK_DIR}/{name}.log")
        time.sleep(1)
    raise RuntimeError(f"the {name} server did not answer at {url} within {seconds:.0f}s; see {STACK_DIR}/{name}.log")


def stack_env() -> dict[str, str]:
    """PREFECT_API_URL / MLFLOW_TRACKING_URI for a running local stack, or {} when it is down."""
    found, health = urls(), health_urls()
    env = {}
    if _healthy(health["prefect"]):
        env["PREFECT_API_URL"] = found["prefect_api"]
    if _healthy(health["mlflow"]):
        env["MLFLOW_TRACKING_URI"] = found["mlflow"]
    return env


def up(config_path: str = "configs/demo.yaml") -> dict[str, str]:
    STACK_DIR.mkdir(exist_ok=True)
    found, port = urls(), ports()
    env = dict(
        os.environ,
        PREFECT_HOME=str(Path(STACK_DIR, "prefect").resolve()),
        # The UI calls the API it is told to; unset, it would call :4200 whatever port it is served on.
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port["prefect"]),
        PREFECT_UI_API_URL=found["prefect_api"],
        PREFECT_API_URL=found["prefect_api"],
    )
    bin_dir = Path(sys.executable).parent
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port["prefect"])]
    _start("prefect", prefect, env)
    artifact_root = Path(ARTIFACT_ROOT).resolve().as_uri()
    mlflow = [
        str(bin_dir / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port["mlflow"]),
        "--backend-store-uri",
        BACKEND_STORE,
        # New experiments keep artifacts at file:// locations the clients write directly (all on this machine),
        # so a run made without the server reads and writes the same experiments; the proxy still serves the
        # mlflow-artifacts:/ locations of experiments an older stack created.
        "--default-artifact-root",
        artifact_root,
        "--artifacts-destination",
        ARTIFACT_ROOT,
        "--workers",
        "1",
    ]
    _start("mlflow", mlflow, env)
    health = health_urls()
    _wait("prefect", health["prefect"])
    _wait("mlflow", health["mlflow"])
    serve_env = dict(env, MLFLOW_TRACKING_URI=found["mlflow"])
    _start("serve", [str(bin_dir / "qlora"), "serve", config_path], serve_env)
    (STACK_DIR / "urls.json").write_text(json.dumps(found, indent=2))
    return found


def down() -> list[str]:
    """Stop what we started (each process group), waiting for it to exit; a stranger's pid is never signalled."""
    stopped = []
    for name in SERVICES:
        process = _ours(name)
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except psutil.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            except (OSError, psutil.Error):
                pass
            stopped.append(name)
        _state_file(name).unlink(missing_ok=True)
    return stopped


def status() -> dict[str, dict]:
    """Per service: running (ours, alive), pid, and for the servers their URL and whether it answers."""
    found, health = urls(), health_urls()
    report = {}
    for name in SERVICES:
        process = _ours(name)
        entry: dict = {"running": process is not None, "pid": process.pid if process else None}
        if name in health:
            entry["url"] = found["prefect_ui" if name == "prefect" else "mlflow"]
            entry["healthy"] = _healthy(health[name])
        if process is None and _state_file(name).is_file():
            entry["problem"] = f"started but no longer running (crashed?); see {STACK_DIR}/{name}.log"
        report[name] = entry
    return report
