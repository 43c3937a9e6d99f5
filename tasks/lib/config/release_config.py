"""Config sections for releasing a model: merge, registry, tracking and the retraining schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tasks.lib.config.section import Section


class MergeConfig(Section):
    strategy: Literal["dequantize", "original"] = Field(
        "dequantize",
        description="dequantize: merge into the dequantized 4-bit base the adapter was trained on; "
        "original: merge into the full-precision base.",
    )
    min_argmax_agreement: float = Field(0.99, gt=0.0, le=1.0, description="At answer positions, merged vs adapter.")
    max_relative_distance: float = Field(
        0.1, gt=0.0, lt=1.0, description="Merged-to-adapter over base-to-adapter distance (answer log-probs)."
    )
    num_fidelity_prompts: int = Field(32, gt=8, description="Test items the merge check compares.")


class RegistryConfig(Section):
    enabled: bool = Field(True, description="Register a run whose gates pass; false: track it only.")
    model_name: str = Field(description="Registered model name in the MLflow Model Registry.")
    confirmation_horizon: int = Field(
        52,
        ge=1,
        description="Challenger-vs-champion confirmations one test set makes (52: a year of weekly retrains); "
        "gate.alpha is spread evenly over them, so a model no better than the champion is promoted within the "
        "horizon with probability <= gate.alpha, and a gain is found as often at the last look as at the first.",
    )
    horizon_renewals: int = Field(
        0,
        ge=0,
        description="Raise by one to declare a new horizon on the same test items once the budget is spent (each "
        "horizon spends another gate.alpha on them); fresh test items renew it too.",
    )


# The local tracking store and artifact root, in the project root: what `qlora run` uses without a tracking URI and
# what the local stack (`make up`) serves.
LOCAL_TRACKING_STORE = "mlruns.db"
LOCAL_ARTIFACT_ROOT = "mlartifacts"


class TrackingConfig(Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else the SQLite store mlruns.db in the project "
        "root (from any working directory).",
    )
    experiment: str = Field("qlora", description="MLflow experiment the runs are logged in.")
    artifact_location: str | None = Field(
        None, description="Artifact root for a new experiment; with the local store, default mlartifacts/ beside it."
    )

    @field_validator("uri", "artifact_location")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        authority = (value or "").split("://", 1)[-1].split("/", 1)[0]
        if "@" in authority:
            raise ValueError(
                "must not carry credentials (user:password@): a config is copied into run folders, MLflow and "
                "Prefect parameters. Set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or the store's own "
                "environment variables) instead"
            )
        return value


class ScheduleConfig(Section):
    cron: str | None = Field("0 3 * * 1", description="Retraining schedule (cron); null: none.")
    timezone: str = Field("UTC", description="Time zone the cron schedule is read in.")
