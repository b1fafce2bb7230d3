"""The Dagster code location: assembles assets, checks, jobs, schedules and sensors.

Kept short on purpose: each piece lives in its own module of :mod:`orchestration`.
Settings come from the environment at run time (``REDIS_URL``, ``CRYPTOPIPE_HOME``),
with the command line's defaults when unset.
"""

import os

import dagster as dg

from marketdata.settings import DEFAULT_HOME, DEFAULT_REDIS_URL
from orchestration.assets.batch import archived_trades, daily_batch
from orchestration.assets.daily import reconciliation, stream_candles
from orchestration.assets.flows import flow_assets, flow_checks
from orchestration.assets.raw_log import raw_log_stats
from orchestration.flows import restart_flows, start_flows, stop_flows
from orchestration.resources import (
    FlowSupervisorResource,
    PipelineResource,
    RedisResource,
    SparkResource,
)
from orchestration.schedules import daily_batch_job, daily_batch_schedule, sealed_day_sensor
from orchestration.sensors import flow_health_sensor


def _env(name: str, default: str) -> str | dg.EnvVar:
    # Resolved by Dagster when the resource is built, not now: only presence is read here.
    return dg.EnvVar(name) if name in os.environ else default


defs = dg.Definitions(
    assets=[
        raw_log_stats,
        *flow_assets,
        archived_trades,
        daily_batch,
        stream_candles,
        reconciliation,
    ],
    asset_checks=[*flow_checks],
    jobs=[start_flows, stop_flows, restart_flows, daily_batch_job],
    schedules=[daily_batch_schedule],
    sensors=[flow_health_sensor, sealed_day_sensor],
    resources={
        "redis": RedisResource(url=_env("REDIS_URL", DEFAULT_REDIS_URL)),
        "pipeline": PipelineResource(
            redis_url=_env("REDIS_URL", DEFAULT_REDIS_URL),
            home=_env("CRYPTOPIPE_HOME", DEFAULT_HOME),
        ),
        "spark": SparkResource(master=_env("CRYPTOPIPE_SPARK_MASTER", "local[2]")),
        "flow_supervisor": FlowSupervisorResource(
            redis_url=_env("REDIS_URL", DEFAULT_REDIS_URL),
            home=_env("CRYPTOPIPE_HOME", DEFAULT_HOME),
        ),
    },
)
