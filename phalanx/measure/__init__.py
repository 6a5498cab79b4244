"""What both drivers and the bench measure with, below all of them: a node's cost
accounting by message type and phase, with the timing wrapper of its state machine
(:mod:`~phalanx.measure.accounting`), inter-region round-trip-time matrices
(:mod:`~phalanx.measure.latency`) and the one percentile definition
(:mod:`~phalanx.measure.percentile`).

The asyncio runtime and the simulator both import these; neither imports the other.
"""
