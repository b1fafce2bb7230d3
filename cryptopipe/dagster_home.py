"""The Dagster instance of ``cryptopipe up``: DAGSTER_HOME and workspace under ``--home``."""

from __future__ import annotations

from pathlib import Path

from marketdata.settings import Settings

_INSTANCE = """\
# Written by cryptopipe up. Local storage (SQLite) under this directory.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
"""

_WORKSPACE = """\
# Written by cryptopipe up: the project's code location.
load_from:
  - python_module:
      module_name: orchestration.definitions
      location_name: realtime_crypto_pipeline
"""


def prepare(settings: Settings) -> tuple[Path, Path]:
    """Create ``<home>/dagster`` with an instance config and a workspace; return both paths."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    instance = home / "dagster.yaml"
    if not instance.exists():
        instance.write_text(_INSTANCE)
    workspace = home / "workspace.yaml"
    workspace.write_text(_WORKSPACE)
    return home, workspace
