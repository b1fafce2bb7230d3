"""The Dagster code location: assembles assets, checks, jobs, schedules and sensors.

Kept short on purpose: each piece lives in its own module of :mod:`orchestration`.
"""

from __future__ import annotations

import dagster as dg

from orchestration.assets.raw_log import raw_log_stats
from orchestration.resources import RedisResource

defs = dg.Definitions(
    assets=[raw_log_stats],
    resources={"redis": RedisResource(url=dg.EnvVar("REDIS_URL"))},
)
