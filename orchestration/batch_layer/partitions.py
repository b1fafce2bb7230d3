"""The daily partitions of the batch side (UTC days from a configurable start)."""

import os

import dagster as dg

#: First day of the partitions; ``CRYPTOPIPE_START_DATE`` overrides it (read when the
#: code location loads: it shapes the asset graph, it is not a secret).
DEFAULT_START = "2025-01-01"

daily = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("CRYPTOPIPE_START_DATE", DEFAULT_START), timezone="UTC"
)
