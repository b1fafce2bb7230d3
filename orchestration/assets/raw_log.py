"""Observation of the raw log: how much is in it and how far it reaches."""

import dagster as dg

from orchestration.resources import RedisResource
from streaming.rawlog_stats import raw_log_summary


@dg.asset(name="raw_log", group_name="speed_layer", kinds={"redis"})
def raw_log_stats(context: dg.AssetExecutionContext, redis: RedisResource) -> dg.MaterializeResult:
    """Length and id range of every raw-log stream (``md:trades:raw`` and its shards)."""
    summary = raw_log_summary(redis.client())
    context.log.info("raw log: %s", summary)
    return dg.MaterializeResult(
        metadata={
            "entries": dg.MetadataValue.int(sum(s["length"] for s in summary.values())),
            "streams": dg.MetadataValue.json(summary),
        }
    )
