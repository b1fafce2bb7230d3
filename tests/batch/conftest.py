"""One SparkSession (local[2]) for every batch test of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from batch.spark import SparkConfig, build_session


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The session; ``cryptopipe batch run`` called in-process reuses it too."""
    session = build_session(SparkConfig(master="local[2]"))
    yield session
    session.stop()
