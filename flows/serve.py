"""Deployments: on-demand runs from the UI, and scheduled retraining. No logic lives here.

`qlora serve configs/demo.yaml` (or `qlora stack up`) serves both; trigger them from the Prefect UI's
"Run" button (the parameter form comes from `finetune`'s signature) or
`prefect deployment run 'qlora-finetune/qlora-on-demand' --param overrides='["train.max_steps=50"]'`.
"""

from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.finetune import finetune
from tasks.lib.config import load_config

ON_DEMAND = "qlora-on-demand"
SCHEDULED = "qlora-scheduled-retrain"


def build_deployments(config_path: str) -> list:
    config = load_config(config_path)
    on_demand = finetune.to_deployment(
        name=ON_DEMAND,
        parameters={"config_path": config_path, "overrides": []},
        description="Fine-tune, evaluate, check forgetting, merge and register, on demand.",
        tags=["qlora", config.name],
    )
    deployments = [on_demand]
    if config.schedule.cron:
        deployments.append(
            finetune.to_deployment(
                name=SCHEDULED,
                parameters={"config_path": config_path, "overrides": [], "skip_if_unchanged": True},
                schedule=Cron(config.schedule.cron, timezone=config.schedule.timezone),
                description="Retrains when the DVC data version or the config changed since the last registered model.",
                tags=["qlora", config.name, "scheduled"],
            )
        )
    return deployments


def serve_deployments(config_path: str) -> None:
    """Blocks, running flow runs one at a time: two trainings never share this worker."""
    serve(*build_deployments(config_path), limit=1)
