"""A machine's CPU costs of running a protocol, as measured by ``phalanx calibrate``.

The simulator charges these costs to a node's CPU when the node handles an input and
sends its outputs (see :mod:`phalanx.sim.resources`). Every cost is linear in
the message size: ``a_ns + b_ns_per_byte * bytes``.

- ``handler[type]``: a replica core handling one message of ``type`` (decoded), execution
  excluded; ``client_handler[type]`` the same for a client core; ``client_submit`` the
  client core starting a request (its authenticator: one MAC per replica);
- ``per_executed_op_ns``: the host's per-request work when a batch executes (replies,
  client table), beyond the state machine itself; ``execute``: the state machine's
  ``apply`` per op (and per op byte);
- ``encode[type]``: encoding one outgoing message;
- ``transport_send`` / ``transport_recv``: the transport's work per frame (framing,
  MAC, system calls, decoding on the receiving side), measured over real loopback TCP;
- ``runtime_per_msg_ns``: what a real replica process spends per message in or out
  beyond all of the above (event loop, driver bookkeeping, metrics, flush scheduling,
  the read system calls uvloop makes before the transport sees the bytes), measured as
  the residual of one short real run (see ``phalanx calibrate``);
- ``crypto``: the primitive operations (informational: their cost is already inside
  the handlers that call them, which were timed with real cryptography).

JSON round-trips exactly (``to_json``/``from_json``), so a cost model file is a
reproducible input of ``phalanx sim --cost-model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Linear = tuple[float, float]
"""``(a_ns, b_ns_per_byte)``."""


def cost_ns(linear: Linear | None, nbytes: int) -> float:
    if linear is None:
        return 0.0
    return linear[0] + linear[1] * nbytes


@dataclass
class CostModel:
    protocol: str
    handler: dict[str, Linear] = field(default_factory=dict)
    client_handler: dict[str, Linear] = field(default_factory=dict)
    client_submit: Linear = (0.0, 0.0)
    encode: dict[str, Linear] = field(default_factory=dict)
    execute: Linear = (0.0, 0.0)
    per_executed_op_ns: float = 0.0
    transport_send: Linear = (0.0, 0.0)
    transport_recv: Linear = (0.0, 0.0)
    timer_ns: float = 0.0
    runtime_per_msg_ns: float = 0.0
    crypto: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    DEFAULT_HANDLER: Linear = (20_000.0, 0.0)
    """For a message type the calibration never saw (a view change in a calm run)."""

    def handle_ns(self, kind: str, nbytes: int) -> float:
        return cost_ns(self.handler.get(kind, self.DEFAULT_HANDLER), nbytes)

    def client_handle_ns(self, kind: str, nbytes: int) -> float:
        return cost_ns(self.client_handler.get(kind, self.DEFAULT_HANDLER), nbytes)

    def send_ns(self, kind: str, nbytes: int) -> float:
        return cost_ns(self.encode.get(kind), nbytes) + cost_ns(self.transport_send, nbytes)

    def recv_ns(self, nbytes: int, replica: bool = True) -> float:
        """Receiving one frame; a replica process also pays its runtime's per-message
        overhead (clients share connections and were measured as such)."""
        overhead = self.runtime_per_msg_ns if replica else 0.0
        return cost_ns(self.transport_recv, nbytes) + overhead

    def execute_ns(self, ops: int, op_bytes: int) -> float:
        if not ops:
            return 0.0
        a, b = self.execute
        return ops * (a + self.per_executed_op_ns) + b * op_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "handler": {k: list(v) for k, v in sorted(self.handler.items())},
            "client_handler": {k: list(v) for k, v in sorted(self.client_handler.items())},
            "client_submit": list(self.client_submit),
            "encode": {k: list(v) for k, v in sorted(self.encode.items())},
            "execute": list(self.execute),
            "per_executed_op_ns": self.per_executed_op_ns,
            "transport_send": list(self.transport_send),
            "transport_recv": list(self.transport_recv),
            "timer_ns": self.timer_ns,
            "runtime_per_msg_ns": self.runtime_per_msg_ns,
            "crypto": self.crypto,
            "machine": self.machine,
            "fit": self.fit,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CostModel:
        def lin(v: Any) -> Linear:
            a, b = v
            return (float(a), float(b))

        try:
            return cls(
                protocol=str(doc["protocol"]),
                handler={k: lin(v) for k, v in doc.get("handler", {}).items()},
                client_handler={k: lin(v) for k, v in doc.get("client_handler", {}).items()},
                client_submit=lin(doc.get("client_submit", (0, 0))),
                encode={k: lin(v) for k, v in doc.get("encode", {}).items()},
                execute=lin(doc.get("execute", (0, 0))),
                per_executed_op_ns=float(doc.get("per_executed_op_ns", 0.0)),
                transport_send=lin(doc.get("transport_send", (0, 0))),
                transport_recv=lin(doc.get("transport_recv", (0, 0))),
                timer_ns=float(doc.get("timer_ns", 0.0)),
                runtime_per_msg_ns=float(doc.get("runtime_per_msg_ns", 0.0)),
                crypto={k: float(v) for k, v in doc.get("crypto", {}).items()},
                machine=dict(doc.get("machine", {})),
                fit=dict(doc.get("fit", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a phalanx cost model: {exc!r}") from None

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        try:
            doc = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
        return cls.from_json(doc)
