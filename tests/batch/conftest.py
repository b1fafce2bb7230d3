"""A SparkSession (local[2]) for the batch tests: the process's one, alive.

Function-scoped on purpose: ``build_session`` reuses the session this process already
runs (one JVM for the whole test run), and builds a new one on the same JVM when a
test before stopped it (``cryptopipe batch run`` called in-process, or a Dagster run's
``LazySpark``, stops the session it was handed).
"""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from batch.spark import SparkConfig, build_session


@pytest.fixture
def spark() -> SparkSession:
    """The session; ``cryptopipe batch run`` called in-process reuses it too."""
    return build_session(SparkConfig(master="local[2]"))
