"""Deployments: on-demand runs from the UI, and scheduled retraining. No logic lives here.

`qlora serve configs/demo.yaml` (or `qlora stack up`) serves both; trigger them from the Prefect UI's
"Run" button (the parameter form comes from `finetune`'s signature) or
`prefect deployment run 'qlora-finetune/qlora-on-demand' --param overrides='["train.max_steps=50"]'`.
"""

from __future__ import annotations

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.automations import install_crash_detection
from flows.finetune import finetune
from tasks.io.events import DATA_UPDATED, data_resource_id
from tasks.lib.config import load_config

ON_DEMAND = "qlora-on-demand"
SCHEDULED = "qlora-scheduled-retrain"
# One run of a deployment at a time, the rest queued (shown as waiting for a slot in the UI): the rule belongs
# to the deployment, so it holds wherever the deployment runs (this process, or a work pool's workers).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(config_path: str) -> list:
    config = load_config(config_path)
    on_demand = finetune.to_deployment(
        name=ON_DEMAND,
        parameters={"config_path": config_path, "overrides": []},
        description="Fine-tune, evaluate, check forgetting, merge and register, on demand.",
        tags=["qlora", config.name],
        concurrency_limit=ONE_AT_A_TIME,
    )
    deployments = [on_demand]
    if config.schedule.cron:
        deployments.append(
            finetune.to_deployment(
                name=SCHEDULED,
                parameters={"config_path": config_path, "overrides": [], "skip_if_unchanged": True},
                schedule=Cron(config.schedule.cron, timezone=config.schedule.timezone),
                # ...and whenever `qlora data-updated` announces a new version of this config's data.
                triggers=[
                    DeploymentEventTrigger(
                        name=f"retrain {config.name} on new data",
                        expect={DATA_UPDATED},
                        match={"prefect.resource.id": data_resource_id(config.name)},
                        parameters={"config_path": config_path, "overrides": [], "skip_if_unchanged": True},
                    )
                ],
                description="Retrains on its schedule and when new data is announced, unless data and config are "
                "unchanged since the last attempt.",
                tags=["qlora", config.name, "scheduled"],
                concurrency_limit=ONE_AT_A_TIME,
            )
        )
    return deployments


def serve_deployments(config_path: str) -> None:
    """Blocks, running flow runs one at a time: two trainings never share this machine's cores."""
    install_crash_detection()
    serve(*build_deployments(config_path), limit=1)
