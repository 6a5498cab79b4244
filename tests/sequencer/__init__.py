"""A crash-fault sequencer: the second protocol of phalanx, used only in tests, to show
that a protocol is one package plus one registration (docs/architecture.md walks through
it). Register it with ``PHALANX_PROTOCOLS=sequencer:SPEC`` (and this folder on the
``PYTHONPATH``), or ``phalanx.protocols.registry.register(SPEC)`` in-process.

The leader of view v (replica v mod n) orders batches of client requests; followers
persist each ORDER and acknowledge it; a majority of acknowledgements commits it; every
replica executes committed batches in order on its replica host. A follower that sees
no progress moves to the next view and sends the new leader its log; the new leader
takes, for each sequence number, the entry of the highest view among a majority of logs
(Viewstamped Replication's rule) and carries on. It tolerates f crashes of n >= 2f+1
replicas, no Byzantine one.
"""

from sequencer.spec import SPEC

__all__ = ["SPEC"]
