"""Clients of a running cluster, built from its config file.

One :class:`~phalanx.runtime.client.ClientRunner` per logical client (a client has one
outstanding request at a time); :func:`open_client` makes one.
"""

from __future__ import annotations

import asyncio
import time

from phalanx.config import ClusterConfig
from phalanx.crypto.ed25519 import Ed25519ClientCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.protocols.registry import protocol
from phalanx.runtime.client import ClientMux, ClientRunner, ClientTransport
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
    spec = protocol(config.protocol)
    core = spec.make_client(crypto, config.quorums, retransmit_timeout)
    core.next_timestamp = time.time_ns() // 1000
    transport = client_transport(config, keypair, metrics)
    runner = ClientRunner(core, transport)
    await transport.start()
    await _wait_for_quorum(transport, config.quorums.strong, connect_timeout, config.n)
    return runner


async def open_clients(
    config: ClusterConfig,
    count: int,
    *,
    retransmit_timeout: float = 1.0,
    metrics: Metrics | None = None,
    connect_timeout: float = 10.0,
    multicast: bool = False,
) -> tuple[ClientMux, list[ClientRunner]]:
    """``count`` clients (fresh key pairs) sharing one connection per replica; with
    ``multicast``, each request goes to every replica at once (PBFT: the backups check it
    while the primary batches it)."""
    public_keys = list(config.public_keys)
    quorums = config.quorums
    spec = protocol(config.protocol)
    transport = client_transport(config, KeyPair.generate(), metrics)
    mux = ClientMux(transport)
    runners = []
    first_timestamp = time.time_ns() // 1000
    for _ in range(count):
        crypto = Ed25519ClientCrypto(KeyPair.generate(), public_keys)
        core = spec.make_client(crypto, quorums, retransmit_timeout)
        core.next_timestamp = first_timestamp
        core.endpoint = mux.endpoint
        if multicast:
            core.multicast = True
        runners.append(mux.add(core))
    await transport.start()
    await _wait_for_quorum(transport, quorums.strong, connect_timeout, config.n)
    return mux, runners


def client_transport(config: ClusterConfig, keypair: KeyPair,
                     metrics: Metrics | None = None) -> ClientTransport:
    """Links from ``keypair``'s client to every replica's front process of ``config``
    (not dialing yet: ``await transport.start()``)."""
    return ClientTransport(
        keypair, {r.id: (r.host, r.port) for r in config.replicas}, list(config.public_keys),
        protocol(config.protocol).decoder(), None, metrics, front_role=config.front_role,
    )


async def _wait_for_quorum(
    transport: ClientTransport, quorum: int, timeout: float, n: int
) -> None:
    # A quorum of links is enough to make progress; the rest keep redialing.
    deadline = time.monotonic() + timeout
    while len(transport.connected_replicas) < quorum:
        if time.monotonic() > deadline:
            await transport.close()
            reached = len(transport.connected_replicas)
            raise TimeoutError(f"could reach only {reached} of {n} replicas")
        await asyncio.sleep(0.02)
