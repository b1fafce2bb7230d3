"""Jobs that start, stop and restart flows, by hand from the UI or from the health sensor."""

import dagster as dg

from orchestration.resources import FlowSupervisorResource
from orchestration.runtags import FLOW_CONTROL_TAGS
from streaming.supervisor import PROCESSES


class FlowSelection(dg.Config):
    """Which flow: ``candles``, ``metrics``, ``archive``, a feed process, or ``all``.

    Attributes:
        flow: the flow's name, a feed process's (``feed``, or ``feed-<feed>`` when
            ``cryptopipe up`` runs several feeds), or ``all`` (the flows and the feed
            processes the health sensor watches).
        reason: why (shown in the run and in the restart history).
        automatic: set by the health sensor; a manual action also clears a crash loop.
    """

    flow: str = "all"
    reason: str = "manual"
    automatic: bool = False


def _selected(config: FlowSelection, resource: FlowSupervisorResource) -> list[str]:
    if config.flow == "all":
        return resource.watched()
    if config.flow not in PROCESSES:
        msg = f"unknown flow {config.flow!r}: use all or one of {', '.join(PROCESSES)}"
        raise dg.Failure(msg)
    return [config.flow]


def _act(
    context: dg.OpExecutionContext,
    config: FlowSelection,
    resource: FlowSupervisorResource,
    action: str,
) -> None:
    sup = resource.supervisor()
    for name in _selected(config, resource):
        if config.automatic and sup.desired(name) == "stopped":
            # Stopped on purpose since the sensor asked (e.g. cryptopipe up exiting).
            context.log.info(f"{name}: not {action}ed: it was stopped on purpose")
            continue
        if action != "stop" and not config.automatic:
            sup.clear_failed(name)  # a person asked: forget a crash loop
        if action == "start":
            sup.start(name)
        elif action == "stop":
            sup.stop(name)
        else:
            sup.restart(name, reason=config.reason)
        st = sup.status(name)
        context.log.info(f"{name}: {st.state} (pid {st.pid}, {st.reason})")


@dg.op(tags={"kind": "flow-control"})
def start_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Start the selected flows (no-op for those running); clears a crash loop."""
    _act(context, config, flow_supervisor, "start")


@dg.op(tags={"kind": "flow-control"})
def stop_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Stop the selected flows (SIGTERM: they snapshot and exit); the sensor leaves them be."""
    _act(context, config, flow_supervisor, "stop")


@dg.op(tags={"kind": "flow-control"})
def restart_flow(
    context: dg.OpExecutionContext, config: FlowSelection, flow_supervisor: FlowSupervisorResource
) -> None:
    """Restart the selected flows, recording why."""
    _act(context, config, flow_supervisor, "restart")


#: Flow control runs its one step in the run's own process: the default multiprocess
#: executor would start a second Python process for it, which on a loaded 2-core
#: machine (a Spark batch running) added about 10 s to a restart (docs/operations.md).
_IN_PROCESS = dg.in_process_executor


@dg.job(
    tags=FLOW_CONTROL_TAGS,
    executor_def=_IN_PROCESS,
    description="Start one flow or all of them (config: flow).",
)
def start_flows() -> None:
    """Start flows."""
    start_flow()


@dg.job(
    tags=FLOW_CONTROL_TAGS,
    executor_def=_IN_PROCESS,
    description="Stop one flow or all of them (config: flow).",
)
def stop_flows() -> None:
    """Stop flows."""
    stop_flow()


@dg.job(
    tags=FLOW_CONTROL_TAGS,
    executor_def=_IN_PROCESS,
    description="Restart one flow or all of them (config: flow); the health sensor uses it.",
)
def restart_flows() -> None:
    """Restart flows."""
    restart_flow()
