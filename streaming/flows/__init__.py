"""Long-running bytewax flows, one module each (``streaming.flows.<name>:get_flow``)."""
