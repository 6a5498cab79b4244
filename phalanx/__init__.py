"""phalanx: scalable Byzantine-fault-tolerant state-machine replication."""

__version__ = "0.1.0"
