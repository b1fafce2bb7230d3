"""Run tags that say what kind of work a Dagster run is (one place for their names).

The instance config written by ``cryptopipe up`` (``cryptopipe/dagster_home.py``)
limits runs by these tags: batch runs (Spark) one at a time; flow-control runs never
wait and are dequeued first (docs/operations.md, "Dagster runs"). This module imports
nothing, so the command line can read it without loading Dagster.
"""

#: Run tag naming the kind of work of a run.
KIND_TAG = "cryptopipe/kind"
BATCH_KIND = "batch"
FLOW_CONTROL_KIND = "flow-control"
#: Dagster's own priority tag: the queue dequeues higher values first.
PRIORITY_TAG = "dagster/priority"
#: Flow-control runs are dequeued before any other queued run.
FLOW_CONTROL_PRIORITY = 10

#: Tags of every run of the daily batch job.
BATCH_TAGS = {KIND_TAG: BATCH_KIND}
#: Tags of every run of the flow-control jobs (start, stop, restart).
FLOW_CONTROL_TAGS = {KIND_TAG: FLOW_CONTROL_KIND, PRIORITY_TAG: str(FLOW_CONTROL_PRIORITY)}
#: Tag naming the supervisor's request (the run key of its decision) on a flow-control run
#: launched by the health sensor; the sensor finds the run of a request by it.
REQUEST_TAG = "cryptopipe/request"
