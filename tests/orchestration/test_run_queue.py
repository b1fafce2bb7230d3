"""The instance ``cryptopipe up`` writes: batch runs queue one at a time, flow control never.

Dagster's own queue logic decides: the instance is loaded from the written
``dagster.yaml`` and the run-queue daemon's dequeue step is asked which queued runs
it would launch.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from cryptopipe.dagster_home import HEADER, prepare, write_instance_config
from marketdata.settings import Settings
from orchestration.batch_layer.schedules import daily_batch_job
from orchestration.definitions import defs
from orchestration.runtags import BATCH_TAGS, FLOW_CONTROL_TAGS
from orchestration.speed_layer.jobs import restart_flows

# Where the daemon would load the jobs from (the workspace of cryptopipe up).
LOCATION = InProcessCodeLocationOrigin(
    LoadableTargetOrigin(module_name="orchestration.definitions"),
    location_name="realtime_crypto_pipeline",
)


def queued(instance: dg.DagsterInstance, job: dg.JobDefinition, status: dg.DagsterRunStatus) -> str:
    """A run of ``job`` in ``status``, tagged as the job's runs are."""
    origin = RemoteRepositoryOrigin(LOCATION, "__repository__").get_job_origin(job.name)
    run = instance.create_run_for_job(
        job_def=job, status=status, tags=dict(job.tags), remote_job_origin=origin
    )
    return run.run_id


def test_flow_control_is_dequeued_at_once_while_batch_runs_wait(tmp_path: Path) -> None:
    home, _ = prepare(Settings(home=tmp_path))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        batch_job = defs.resolve_job_def(daily_batch_job.name)
        assert dict(batch_job.tags) == BATCH_TAGS
        assert FLOW_CONTROL_TAGS.items() <= dict(restart_flows.tags).items()
        queued(instance, batch_job, dg.DagsterRunStatus.STARTED)  # one batch runs
        waiting = [queued(instance, batch_job, dg.DagsterRunStatus.QUEUED) for _ in range(5)]
        control = queued(instance, restart_flows, dg.DagsterRunStatus.QUEUED)  # queued last
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
        assert [r.run_id for r in picked] == [control]
        # With the batch run done, the next batch run goes, one, the oldest.
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            instance.report_run_failed(run)
        picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
        assert [r.run_id for r in picked] == [control, waiting[0]]  # priority first


def test_our_config_is_rewritten_a_users_own_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "dagster.yaml"
    path.write_text(f"{HEADER} an older release\nrun_coordinator:\n  max_concurrent_runs: 4\n")
    assert write_instance_config(tmp_path)
    assert "tag_concurrency_limits" in path.read_text()
    mine = "# my own\ntelemetry:\n  enabled: false\n"
    path.write_text(mine)
    assert not write_instance_config(tmp_path)
    assert path.read_text() == mine
