"""Which errors a retry (a Ray worker group, a Prefect task) could heal, and how the command shows one it did
not expect."""

from pathlib import Path

import pytest

from tasks.lib.config import ConfigError
from tasks.lib.core.errors import cannot_heal


@pytest.mark.parametrize(
    ("error", "heals"),
    [
        (ConfigError("bad key"), False),
        (ModuleNotFoundError("flash_attn"), False),
        (FileNotFoundError(2, "No such file", "model.safetensors"), False),
        (OSError("models/x is not a local folder and is not a valid model identifier"), False),  # transformers
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (OSError(5, "Input/output error"), True),
        (RuntimeError("gloo: connection closed by peer"), True),  # a peer worker died: a new group may succeed
    ],
)
def test_only_errors_that_can_heal_are_retried(error, heals):
    assert cannot_heal(error) is not heals


def test_an_unexpected_error_is_one_line_on_the_terminal_and_a_traceback_in_a_file(monkeypatch, capsys):
    from flows import cli

    def broken(**_):
        raise KeyError("a bug\nwith a second line")

    spec = next(verb for verb in cli.VERBS if verb.name == "validate")
    monkeypatch.setattr(cli, "VERBS", [cli.Verb("validate", broken, spec.help, spec.arguments)])
    assert cli.main(["validate", "configs/demo.yaml"]) == 5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: KeyError: 'a bug") and "the full traceback is in" in line
    log = Path(line.rsplit(" ", 1)[-1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text() and "def broken" not in line
    log.unlink()
