"""Byzantine testing: the Borgesian fuzzer, protocol-aware strategies, Twins, checkers
per protocol, liveness after GST, ``phalanx fuzz`` (see :mod:`phalanx.byzantine.fuzz`)
and the real-process nemesis (:mod:`phalanx.byzantine.nemesis`)."""
