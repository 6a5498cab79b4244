"""Link faults for the real-process nemesis: partitions and slowed links, in-process.

``phalanx bench --nemesis`` sets :data:`LINK_FAULTS_ENV` to a directory before it starts
the replicas. Each replica then wraps its transport's shaper in :class:`LinkFaults` and
re-reads ``<dir>/replica-<id>.json`` on SIGUSR1::

    {"blocked": [2, 3], "delay_ms": {"1": 50}}

Messages to a blocked replica are dropped (the other side of the cut blocks us too, so
a partition is symmetric; clients are never cut), and ``delay_ms`` is added to the link
to that replica, FIFO, on top of any WAN delay. Neither iptables nor tc is needed, so
the nemesis runs unprivileged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from phalanx.runtime.metrics import Metrics
from phalanx.runtime.wan import Shaper

LINK_FAULTS_ENV = "PHALANX_LINK_FAULTS"

log = logging.getLogger("phalanx.linkfaults")


def control_path(directory: str | Path, replica_id: int) -> Path:
    return Path(directory) / f"replica-{replica_id}.json"


def write_control(
    directory: str | Path, replica_id: int, blocked: set[int], delay_ms: dict[int, float]
) -> None:
    """Write the faults of ``replica_id`` atomically (the replica may read at any time)."""
    path = control_path(directory, replica_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"blocked": sorted(blocked),
                               "delay_ms": {str(k): v for k, v in sorted(delay_ms.items())}}))
    tmp.replace(path)


def read_control(path: Path) -> tuple[frozenset[int], dict[int, float]]:
    """(blocked replicas, extra delay in seconds per replica); no file means no faults.
    Raises ValueError on a malformed file."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return frozenset(), {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        blocked = frozenset(int(r) for r in raw.get("blocked", []))
        delays = {int(r): float(ms) / 1000.0 for r, ms in raw.get("delay_ms", {}).items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if any(d < 0 for d in delays.values()):
        raise ValueError(f"{path}: negative delay")
    return blocked, delays


class LinkFaults(Shaper):
    """A :class:`Shaper` that also drops messages to blocked replicas and adds delays to
    chosen links; it keeps the delays and bandwidth cap of the shaper it replaces."""

    def __init__(self, base: Shaper | None, metrics: Metrics | None = None) -> None:
        super().__init__(
            dict(base.out_delays) if base else {},
            dict(base.in_delays) if base else {},
            base.bandwidth_bps if base else None,
        )
        self._base_out: dict[Hashable, float] = dict(self.out_delays)
        self.blocked: frozenset[int] = frozenset()
        self.metrics = metrics
        self.dropped = 0

    def apply(self, blocked: frozenset[int], delays: dict[int, float]) -> None:
        """Replace the current faults (an empty set and dict heal everything)."""
        self.blocked = blocked
        out = dict(self._base_out)
        for dest, extra in delays.items():
            out[dest] = out.get(dest, 0.0) + extra
        self.out_delays = out

    def send(self, dest: Hashable, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        if dest in self.blocked:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.inc("dropped_nemesis_partition")
            return
        super().send(dest, nbytes, fn, *args)


def install(transport: Any, replica_id: int, directory: str | Path,
            metrics: Metrics | None = None) -> LinkFaults:
    """Wrap ``transport.shaper``; load the control file now and on every SIGUSR1.
    Call from inside the running event loop."""
    faults = LinkFaults(transport.shaper, metrics)
    transport.shaper = faults
    path = control_path(directory, replica_id)

    def reload() -> None:
        try:
            blocked, delays = read_control(path)
        except ValueError as exc:
            log.error("link faults not changed: %s", exc)
            return
        faults.apply(blocked, delays)
        log.info("link faults: blocked %s, extra delay %s", sorted(blocked),
                 {k: f"{v * 1000:g}ms" for k, v in sorted(delays.items())})

    reload()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, reload)
    return faults
