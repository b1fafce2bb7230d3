"""The Dagster instance of ``cryptopipe up``: DAGSTER_HOME and workspace under ``--home``.

The instance config (``dagster.yaml``) queues runs so that flow control never waits
behind the batch (docs/operations.md, "Dagster runs"):

* runs tagged ``cryptopipe/kind: batch`` (the daily batch job: Spark) run one at a
  time, and so do backfill runs (``dagster/backfill``, any value);
* there is no overall cap (``max_concurrent_runs: -1``), so a flow start or restart
  is dequeued at once however many batch runs wait; flow-control runs also carry
  ``dagster/priority: 10``, so they are dequeued first;
* the queue is looked at every second (``dequeue_interval_seconds: 1``).

The file is ours while its first line is :data:`HEADER`: it is rewritten on every
``cryptopipe up`` (so a new release's settings apply). A file without that line is
the user's own and is left alone.
"""

from __future__ import annotations

from pathlib import Path

from marketdata.settings import Settings
from orchestration.runtags import BATCH_KIND, KIND_TAG

#: First line of the instance config we write; a file starting otherwise is the user's.
HEADER = "# Written by cryptopipe up."

_INSTANCE = f"""\
{HEADER} Local storage (SQLite) under this directory.
# Remove this first line to keep your own changes: the file is rewritten while it is there.
telemetry:
  enabled: false
# The daemon evaluates the daily assets' freshness policies (served by 02:00 UTC).
freshness:
  enabled: true
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # No overall cap: starting or restarting a flow never waits for a slot.
    max_concurrent_runs: -1
    # Look at the queue every second (default 5): a flow restart is asked for by the
    # health sensor every 5 s at most; its run should not wait 5 s more.
    dequeue_interval_seconds: 1
    tag_concurrency_limits:
      # Spark: one batch run at a time (the daily batch job's runs carry this tag).
      - key: {KIND_TAG}
        value: {BATCH_KIND}
        limit: 1
      # Backfills (of the batch assets, any job): one run at a time.
      - key: dagster/backfill
        limit: 1
"""

_WORKSPACE = """\
# Written by cryptopipe up: the project's code location.
load_from:
  - python_module:
      module_name: orchestration.definitions
      location_name: realtime_crypto_pipeline
"""


def write_instance_config(home: Path) -> bool:
    """Write ``<home>/dagster.yaml`` unless a user's own is there; True if written."""
    instance = home / "dagster.yaml"
    if instance.exists():
        with instance.open() as f:
            if not f.readline().startswith(HEADER):
                return False
    instance.write_text(_INSTANCE)
    return True


def prepare(settings: Settings) -> tuple[Path, Path]:
    """Create ``<home>/dagster`` with an instance config and a workspace; return both paths."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    write_instance_config(home)
    workspace = home / "workspace.yaml"
    workspace.write_text(_WORKSPACE)
    return home, workspace
