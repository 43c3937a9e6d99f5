"""What the benchmark scripts share: arguments, quiet libraries, memory probes, step timers, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def quiet_libraries() -> None:
    """Offline, no progress bars, no tokenizer threads fighting torch's on 2 cores."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)
    import warnings

    warnings.filterwarnings("ignore")


def parser(description: str) -> argparse.ArgumentParser:
    """--config, --set (repeatable) and --quick, as every benchmark takes them."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--config", default="configs/demo.yaml", help="run config (default: the demo)")
    result.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    result.add_argument("--quick", action="store_true", help="small settings for a CI smoke run (< 2 min)")
    return result


def load_run_config(path: str, overrides: list[str]):
    from tasks.lib.config import load_config

    return load_config(path, overrides)


def isolated_overrides(root: Path, shared_score_cache: bool = False) -> list[str]:
    """Config overrides that keep a benchmark's prepared data, MLflow store, run folders and (unless
    `shared_score_cache`) base-score cache under `root`: the DVC-tracked data and metrics are never touched."""
    cache = [] if shared_score_cache else [f"forgetting.cache_dir={root / 'score_cache'}"]
    return [
        *cache,
        f"data.processed_dir={root / 'processed'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"tracking.artifact_location={(root / 'mlartifacts').as_uri()}",
        f"output_dir={root / 'runs'}",
    ]


def machine() -> dict[str, Any]:
    import torch

    from tasks.io.versioning import cpu_name

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    return {
        "device": device,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# --- memory -------------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_memory() -> None:
    """Start a new high-water mark: CUDA allocator stats, and on Linux the process RSS peak (VmHWM)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then counts from process start


def peak_memory() -> dict[str, float]:
    """MiB: the RSS high-water mark since the last reset (CPU), and the CUDA peak allocated when on a GPU."""
    import resource

    import torch

    hwm = _status_kib("VmHWM")
    peak_rss = hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"peak_rss_mib": peak_rss / 2**20}
    if torch.cuda.is_available():
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# --- timing -------------------------------------------------------------------------------------------------


@dataclass
class Calls:
    """Wall time of every call of the functions `patch_timer` wrapped, by name, in call order."""

    records: list[tuple[str, float, Any]] = field(default_factory=list)

    def total(self, name: str | None = None) -> float:
        return sum(seconds for called, seconds, _ in self.records if name is None or called == name)


def patch_timer(calls: Calls, module: Any, attribute: str) -> Callable[[], None]:
    """Replace `module.attribute` by a wrapper that records its wall time; returns the undo."""
    original = getattr(module, attribute)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original(*args, **kwargs)
        calls.records.append((attribute, time.perf_counter() - started, result))
        return result

    setattr(module, attribute, timed)
    return lambda: setattr(module, attribute, original)


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` gives seconds so far, and the total once the block ends."""
    started = time.perf_counter()
    ended: list[float] = []
    yield lambda: (ended[0] if ended else time.perf_counter()) - started
    ended.append(time.perf_counter())


# --- results ------------------------------------------------------------------------------------------------


def write_results(name: str, results: dict[str, Any], markdown: str, quick: bool) -> Path:
    """benchmarks/results/<name>[-quick].json (with the markdown line in it) and .md; prints the line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if quick else name
    payload = {
        "benchmark": name,
        "quick": quick,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **results,
        "markdown": markdown,
    }
    path = RESULTS_DIR / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS_DIR / f"{stem}.md").write_text(markdown + "\n")
    print(f"\n{markdown}\nwrote {path.relative_to(REPO_ROOT)}")
    return path


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")
