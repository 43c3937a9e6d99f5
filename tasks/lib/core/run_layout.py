"""A pipeline run directory (`<output_dir>/<name>/<run id>/`): every file that steps, the CLI and the checks find
there by name is named here, once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from tasks.lib.core.errors import UserError


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> RunLayout:
        return cls(Path(run_dir))

    @property
    def config_file(self) -> Path:
        """The config the run was started with (what resumes and single-step reruns read)."""
        return self.root / "config.json"

    @property
    def overrides_file(self) -> Path:
        """The `--set` overrides the run was started with: a resume without any re-applies them."""
        return self.root / "overrides.json"

    @property
    def mlflow_marker(self) -> Path:
        """The parent MLflow run, the data fingerprint and the newest attempt's Prefect flow run."""
        return self.root / "mlflow_run.json"

    @property
    def result_file(self) -> Path:
        """The PipelineResult, written when the run ends (finished or failed)."""
        return self.root / "pipeline_result.json"

    def step_marker(self, step: str) -> Path:
        """A completed step's typed result: what a rerun reuses instead of redoing the step."""
        return self.root / "steps" / f"{step}.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def first_eval_loss(self) -> Path:
        """The validation loss before training, measured once (a resume does not measure it again)."""
        return self.root / "first_eval_loss.json"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def data_lengths_chart(self) -> Path:
        return self.root / "data_lengths.png"

    @property
    def task_predictions(self) -> Path:
        """Base and tuned answers on every test item, side by side."""
        return self.root / "task_predictions.jsonl"

    @property
    def task_report(self) -> Path:
        return self.root / "task_eval.md"

    @property
    def forgetting_report(self) -> Path:
        return self.root / "forgetting.md"

    @property
    def gate_file(self) -> Path:
        """The gate's typed decision (every row, its interval and verdict)."""
        return self.root / "gate.json"

    @property
    def forgetting_chart(self) -> Path:
        return self.root / "forgetting.png"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.root / "merged"

    @property
    def merge_reference(self) -> Path:
        """The adapter model's answer log-probabilities, left by the evaluation for the merge check."""
        return self.root / "merge_reference.safetensors"

    @property
    def launch_dir(self) -> Path:
        """What a data-parallel launch (torchrun, accelerate, Ray Train) hands its processes, and gets back."""
        return self.root / "launch"

    @property
    def launch_result(self) -> Path:
        """Rank 0's TrainResult."""
        return self.launch_dir / "result.json"

    @property
    def launch_config(self) -> Path:
        """The resolved config every launched process reads."""
        return self.launch_dir / "config.json"

    @property
    def launch_general_text(self) -> Path:
        """The general text the forgetting proxy scores, handed to every process."""
        return self.launch_dir / "text.json"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's own run storage."""
        return self.launch_dir / "ray"

    @property
    def launch_fatal_error(self) -> Path:
        """The cause a worker left when its error cannot heal (the launch is not retried)."""
        return self.launch_dir / "fatal_error.txt"

    @staticmethod
    def newest_finished(path: Path) -> Path:
        """`path` itself when it is a finished run directory, else its newest subdirectory holding one."""
        if RunLayout.of(path).result_file.is_file():
            return path
        results = (RunLayout.of(folder).result_file for folder in path.iterdir() if folder.is_dir())
        runs = sorted((result for result in results if result.is_file()), key=lambda result: result.stat().st_mtime)
        if not runs:
            raise FileNotFoundError(f"{path}: no finished pipeline run (pipeline_result.json) in it or below it")
        return runs[-1].parent

    def is_pipeline_run(self) -> bool:
        return self.result_file.is_file() or self.mlflow_marker.is_file()


def started_run(run_id: str, runs_dirs: list[Path]) -> RunLayout:
    """The run `run_id` in one of `runs_dirs` (each `<output_dir>/<name>`: one config's runs), refused naming the
    closest ids when it never started there: `--run-id` resumes a run, and a typo must not start a new one."""
    found = [RunLayout.of(Path(folder) / run_id) for folder in runs_dirs]
    found = [layout for layout in found if layout.is_pipeline_run()]
    if len(found) > 1:
        where = ", ".join(str(layout.root) for layout in found)
        raise UserError(f"--run-id {run_id} names runs of several configs ({where}): give the config file too")
    if found:
        return found[0]
    known = sorted(
        run.name for folder in runs_dirs for run in Path(folder).glob("*") if RunLayout.of(run).is_pipeline_run()
    )
    close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    where = ", ".join(str(folder) for folder in runs_dirs) or "no runs folder"
    raise UserError(f"--run-id {run_id}: no run of that id in {where}{hint}. Leave --run-id out to start a new run.")
