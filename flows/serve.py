"""Deployments: on-demand runs from the UI, and scheduled retraining. No logic lives here.

`qlora serve configs/demo.yaml` (or `qlora stack up`) serves both; trigger them from the Prefect UI's
"Run" button (the parameter form comes from `finetune`'s signature) or
`prefect deployment run 'qlora-finetune/qlora-on-demand' --param overrides='["train.max_steps=50"]'`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron

from flows.automations import (
    CLOSE_CRASHED_DEPLOYMENT,
    close_crashed_run,
    install_close_crashed_runs,
    install_crash_detection,
)
from flows.finetune import finetune
from tasks.io.events import DATA_UPDATED, data_resource_id
from tasks.lib.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    closer = close_crashed_run.to_deployment(
        name=CLOSE_CRASHED_DEPLOYMENT,
        description="Run by an automation when a pipeline flow run crashes: closes its MLflow runs as KILLED.",
        tags=["qlora", "automation"],
    )
    install_close_crashed_runs(closer.apply())
    serve(*build_deployments(config_path), closer, limit=1)


def deploy_to_pool(
    name: str, work_pool: str, source: str | None = None, parameters: dict | None = None, tags: list[str] = (), **kwargs
) -> str:
    """The pipeline flow as a deployment on a Prefect process work pool (created if missing), so that every
    `prefect worker start --pool <work_pool>` (one per machine or GPU) runs its flow runs. `source` is where the
    workers get the code: a git URL, or None for this checkout (workers on this host or a shared file system).
    Returns the deployment's full name."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))
    flow_from_source = finetune.from_source(source=source or str(REPO_ROOT), entrypoint="flows/finetune.py:finetune")
    # to_deployment + apply rather than deploy(): Prefect 3.8.8's deploy() lists the pool's workers with null
    # paging, which its own server refuses (422).
    flow_from_source.to_deployment(
        name=name, work_pool_name=work_pool, parameters=parameters or {}, tags=list(tags), **kwargs
    ).apply()
    return f"{finetune.name}/{name}"
