"""Third-party messages that are not ours to fix but are ours to handle: each one named, with its cause.

Only these exact messages are dropped; every other warning and log line of these libraries still shows.
Call `quiet_known_noise()` before peft is imported (peft imports bitsandbytes, which logs at import).
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger, message prefix): log records dropped.
NOISY_LOG_RECORDS = [
    # bitsandbytes 0.50 looks for an optional faster CPU kernel in the `kernels` package; we pin the kernel with
    # gradients ourselves (tasks/lib/modeling/loading.pin_cpu_4bit_kernel), so the missing package changes nothing.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # We hand lm-eval an already-loaded model on purpose (one load per step, single process).
    ("lm_eval.models.huggingface", "`pretrained` model kwarg is not of type `str`"),
    ("lm_eval.models.huggingface", "Passed an already-initialized model through `pretrained`"),
]
# (category, message regex): warnings ignored.
NOISY_WARNINGS = [
    # peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated; once per model wrap.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # MLflow resolves a local data file's source with two equivalent candidates and says so for each input.
    (UserWarning, r"The specified dataset source can be interpreted in multiple ways"),
]


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: list[str]):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Install the filters above (idempotent)."""
    by_logger: dict[str, list[str]] = {}
    for name, prefix in NOISY_LOG_RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropPrefixes) for existing in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_progress_and_links() -> None:
    """Defaults (an environment variable set by the user wins) for a command-line process."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # lm-eval and transformers redraw their progress bars 10 times a second; into a log file or the Prefect
    # logs that is thousands of lines per step. tqdm reads its defaults from TQDM_* variables: one update every
    # 20 s keeps the bars useful in a terminal without flooding a log.
    os.environ.setdefault("TQDM_MININTERVAL", "20")
    os.environ.setdefault("TQDM_MAXINTERVAL", "60")
    # MLflow prints "View run at: <tracking URI>" after each run; a URI from the environment may carry
    # credentials. The CLI prints its own links, scrubbed.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Without `make up`, Prefect starts a temporary server; its 20 s default is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The temporary server's telemetry heartbeat phones home (this machine is offline) and, with two runs on one
    # PREFECT_HOME, fails on the shared SQLite file ("database is locked") with a traceback in the run's output.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
