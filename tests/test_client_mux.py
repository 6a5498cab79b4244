"""ClientMux routing: replies reach the client they name, and only while it waits for them."""

from __future__ import annotations

from types import SimpleNamespace

from phalanx.core.messages import Replies, Reply
from phalanx.core.quorum import Quorums
from phalanx.crypto.ed25519 import Ed25519ClientCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.protocols.pbft.client import PbftClient
from phalanx.runtime.client import ClientMux
from phalanx.runtime.metrics import Metrics


def _mux_with_client() -> tuple[ClientMux, PbftClient, list[tuple[int, bytes]]]:
    sent: list[tuple[int, bytes]] = []
    transport = SimpleNamespace(
        metrics=Metrics("client"),
        send=lambda dest, data: sent.append((dest, data)),
        broadcast=lambda data: sent.append((-1, data)),
        keypair=KeyPair.generate(),
    )
    mux = ClientMux(transport)  # type: ignore[arg-type]
    public_keys = [KeyPair.generate().public_key for _ in range(4)]
    core = PbftClient(Ed25519ClientCrypto(KeyPair.generate(), public_keys), Quorums.for_n(4))
    return mux, core, sent


def test_replies_beyond_the_deciding_ones_are_counted_and_not_processed() -> None:
    mux, core, sent = _mux_with_client()
    runner = mux.add(core)
    runner._set_timer = lambda name, delay: None  # type: ignore[method-assign]  # no loop here
    done: list[tuple[bytes | None, str | None]] = []
    runner.submit(b"op", lambda result, error: done.append((result, error)))
    ts = core.request.timestamp  # type: ignore[union-attr]
    replies = [Reply(core.client_id, 0, ts, r, b"ok") for r in range(4)]
    mux._dispatch(0, Replies(replies[:1]))
    mux._dispatch(1, replies[1])
    assert done == [(b"ok", None)]  # f+1 = 2 matching replies decide it
    mux._dispatch(2, replies[2])
    mux._dispatch(3, Replies([replies[3]]))
    assert done == [(b"ok", None)]
    assert mux.transport.metrics.get("late_replies") == 2
    assert sent  # the request went out


def test_replies_for_an_unknown_client_are_dropped() -> None:
    mux, _, _ = _mux_with_client()
    mux._dispatch(0, Reply(b"x" * 32, 0, 1, 0, b"ok"))
    assert mux.transport.metrics.get("dropped_unknown_client") == 1
