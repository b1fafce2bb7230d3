"""The Dagster code location: assembles assets, checks, jobs and sensors.

Kept short on purpose: the speed layer's pieces live in
:mod:`orchestration.speed_layer`, the batch layer's in :mod:`orchestration.batch_layer`,
the resources in :mod:`orchestration.resources`. Settings come from the environment at
run time (``REDIS_URL``, ``CRYPTOPIPE_HOME``), with the command line's defaults when
unset.
"""

import os

import dagster as dg

from marketdata.settings import DEFAULT_HOME, DEFAULT_REDIS_URL
from orchestration.batch_layer.assets import batch_assets
from orchestration.batch_layer.schedules import daily_batch_job, sealed_day_sensor
from orchestration.resources import FlowSupervisorResource, PipelineResource, SparkResource
from orchestration.speed_layer.assets import flow_checks, speed_assets
from orchestration.speed_layer.jobs import restart_flows, start_flows, stop_flows
from orchestration.speed_layer.sensors import flow_health_sensor


def _env(name: str, default: str) -> str | dg.EnvVar:
    # Resolved by Dagster when the resource is built, not now: only presence is read here.
    return dg.EnvVar(name) if name in os.environ else default


pipeline = PipelineResource(
    redis_url=_env("REDIS_URL", DEFAULT_REDIS_URL), home=_env("CRYPTOPIPE_HOME", DEFAULT_HOME)
)

defs = dg.Definitions(
    assets=[*speed_assets, *batch_assets],
    asset_checks=[*flow_checks],
    jobs=[start_flows, stop_flows, restart_flows, daily_batch_job],
    sensors=[flow_health_sensor, sealed_day_sensor],
    resources={
        "pipeline": pipeline,
        "spark": SparkResource(master=_env("CRYPTOPIPE_SPARK_MASTER", "local[2]")),
        "flow_supervisor": FlowSupervisorResource(pipeline=pipeline),
    },
)
