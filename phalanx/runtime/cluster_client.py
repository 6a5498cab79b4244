"""Clients of a running cluster, built from its config file.

One :class:`~phalanx.runtime.client.ClientRunner` per logical client (a client has one
outstanding request at a time); :func:`open_client` makes one.
"""

from __future__ import annotations

import time

from phalanx.config import ClusterConfig
from phalanx.core.quorum import Quorums
from phalanx.crypto.ed25519 import Ed25519ClientCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.protocols.registry import protocol
from phalanx.runtime.client import ClientRunner, ClientTransport
from phalanx.runtime.launcher import message_decoder
from phalanx.runtime.metrics import Metrics


async def open_client(
    config: ClusterConfig,
    keypair: KeyPair | None = None,
    *,
    retransmit_timeout: float = 1.0,
    metrics: Metrics | None = None,
    connect_timeout: float = 10.0,
) -> ClientRunner:
    """Connect a new client (a fresh key pair unless given) to every replica.

    Timestamps start at the current time in microseconds, so a client that reuses its key
    pair across runs keeps them increasing (replicas ignore older timestamps)."""
    keypair = keypair or KeyPair.generate()
    public_keys = list(config.public_keys)
    crypto = Ed25519ClientCrypto(keypair, public_keys)
    core = protocol(config.protocol).make_client(
        crypto, Quorums(config.n, config.f), retransmit_timeout
    )
    core.next_timestamp = time.time_ns() // 1000  # type: ignore[attr-defined]
    addrs = {r.id: (r.host, r.port) for r in config.replicas}
    transport = ClientTransport(
        keypair, addrs, public_keys, message_decoder(config.protocol), None, metrics
    )
    runner = ClientRunner(core, transport)
    await transport.start()
    # A quorum of links is enough to make progress; the rest keep redialing.
    deadline = time.monotonic() + connect_timeout
    quorum = Quorums(config.n, config.f).strong
    while len(transport.connected_replicas) < quorum:
        if time.monotonic() > deadline:
            await runner.close()
            raise TimeoutError(
                f"could reach only {len(transport.connected_replicas)} of {config.n} replicas"
            )
        await _sleep(0.02)
    return runner


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
