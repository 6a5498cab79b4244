"""What both drivers and the bench measure with, below all of them: a node's cost
accounting by message type and phase, with the timing wrapper of its state machine
(:mod:`~phalanx.measure.accounting`), and inter-region round-trip-time matrices
(:mod:`~phalanx.measure.latency`).

The asyncio runtime and the simulator both import these; neither imports the other.
"""
