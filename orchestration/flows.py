"""Jobs that start, stop and restart flows, by hand from the UI or from the health sensor."""

import dagster as dg

from orchestration.resources import FlowSupervisorResource
from streaming.supervisor import ALL, Supervisor


class FlowSelection(dg.Config):
    """Which flow: ``candles``, ``metrics``, ``archive``, ``feed``, or ``all`` (the flows).

    Attributes:
        flow: the flow's name or ``all``.
        reason: why (shown in the run and in the restart history).
        automatic: set by the health sensor; a manual action also clears a crash loop.
    """

    flow: str = "all"
    reason: str = "manual"
    automatic: bool = False


def _selected(config: FlowSelection, resource: FlowSupervisorResource) -> list[str]:
    if config.flow == "all":
        return list(resource.flows)
    if config.flow not in ALL:
        msg = f"unknown flow {config.flow!r}: use all or one of {', '.join(ALL)}"
        raise dg.Failure(msg)
    return [config.flow]


def _log_status(context: dg.OpExecutionContext, sup: Supervisor, name: str) -> None:
    st = sup.status(name)
    context.log.info(f"{name}: {st.state} (pid {st.pid}, {st.reason})")


@dg.op(tags={"kind": "flow-control"})
def start_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Start the selected flows (no-op for those running); clears a crash loop."""
    sup = flow_supervisor.supervisor()
    for name in _selected(config, flow_supervisor):
        sup.clear_failed(name)
        sup.start(name)
        _log_status(context, sup, name)


@dg.op(tags={"kind": "flow-control"})
def stop_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Stop the selected flows (SIGTERM: they snapshot and exit); the sensor leaves them be."""
    sup = flow_supervisor.supervisor()
    for name in _selected(config, flow_supervisor):
        sup.stop(name)
        _log_status(context, sup, name)


@dg.op(tags={"kind": "flow-control"})
def restart_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Restart the selected flows, recording why."""
    sup = flow_supervisor.supervisor()
    for name in _selected(config, flow_supervisor):
        if not config.automatic:
            sup.clear_failed(name)
        sup.restart(name, reason=config.reason)
        _log_status(context, sup, name)


@dg.job(description="Start one flow or all of them (config: flow).")
def start_flows() -> None:
    """Start flows."""
    start_flow()


@dg.job(description="Stop one flow or all of them (config: flow).")
def stop_flows() -> None:
    """Stop flows."""
    stop_flow()


@dg.job(description="Restart one flow or all of them (config: flow); the health sensor uses it.")
def restart_flows() -> None:
    """Restart flows."""
    restart_flow()
