"""What the runtime client, the ledger gateway, the SDK and the CLI say about refused
requests: "refused (<reason>)" only when the request can never execute, "not accepted yet
(<reason>); retry" otherwise, with distinct exit statuses (docs/pbft.md, "Refusals")."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from phalanx import exit_codes
from phalanx.api.ledger import Gateway
from phalanx.cli import main
from phalanx.client import ledger as sdk
from phalanx.client.ledger import LedgerClient, TxNotAccepted, TxRefused
from phalanx.client.wallet import Wallet
from phalanx.config import generate_cluster
from phalanx.core.messages import Error, Refusal, Reply, Request
from phalanx.core.quorum import Quorums
from phalanx.crypto.keys import KeyPair
from phalanx.protocols.pbft.client import PbftClient
from phalanx.runtime.client import ClientRunner, RequestNotAccepted, RequestRefused
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.sim.crypto import SymbolicOracle

Q = Quorums(4, 1)
GRACE = 0.05
BOUND = 10.0  # no test waits this long unless what it tests is broken
decode = msgspec.msgpack.Decoder(Request).decode


class ReplicasByHand:
    """The transport of a :class:`ClientRunner` with the replicas played by the test:
    it keeps what the client sends and lets the test answer as any replica."""

    def __init__(self) -> None:
        self.metrics = Metrics("client")
        self.on_message = None
        self.sent: list[Request] = []

    def send(self, dest: int, data: bytes) -> None:
        self.sent.append(decode(data))

    def broadcast(self, data: bytes) -> None:
        self.sent.append(decode(data))

    def answer(self, replica: int, make) -> None:
        request = self.sent[-1]
        self.on_message(replica, make(request.client, request.timestamp, replica))


def runner() -> tuple[ClientRunner, ReplicasByHand]:
    transport = ReplicasByHand()
    core = PbftClient(SymbolicOracle(random.Random(3), 4).new_client(), Q)
    return ClientRunner(core, transport, not_accepted_grace=GRACE), transport


def refusal(reason: str, kind: int = Refusal.TRANSIENT):
    return lambda client, ts, replica: Error(client, ts, replica, reason, kind)


def result(value: bytes):
    return lambda client, ts, replica: Reply(client, 0, ts, replica, value)


def test_a_runner_returns_a_result_that_follows_a_not_accepted_quorum():
    async def scenario() -> bytes:
        client, replicas = runner()
        pending = asyncio.create_task(client.request(b"op"))
        await asyncio.sleep(0)
        replicas.answer(2, refusal("insufficient_funds"))  # lagging
        replicas.answer(3, refusal("insufficient_funds"))  # Byzantine echo
        replicas.answer(0, result(b"applied"))
        replicas.answer(1, result(b"applied"))
        return await pending

    assert asyncio.run(scenario()) == b"applied"


def test_a_runner_reports_not_accepted_after_the_grace_and_frees_its_core():
    async def scenario() -> None:
        client, replicas = runner()
        pending = asyncio.create_task(client.request(b"op"))
        await asyncio.sleep(0)
        replicas.answer(0, refusal("overloaded"))
        replicas.answer(1, refusal("overloaded"))
        with pytest.raises(RequestNotAccepted, match=r"not accepted yet \(overloaded\); retry"):
            await asyncio.wait_for(pending, BOUND)
        assert client.core.request is None  # abandoned: the next request may go
        replicas.answer(2, result(b"late"))  # a late answer to it changes nothing
        second = asyncio.create_task(client.request(b"op2"))
        await asyncio.sleep(0)
        replicas.answer(0, result(b"r2"))
        replicas.answer(1, result(b"r2"))
        assert await second == b"r2"
        assert client.transport.metrics.get("requests_not_accepted") == 1

    asyncio.run(scenario())


def test_a_runner_raises_refused_for_f_plus_one_final_refusals():
    async def scenario() -> None:
        client, replicas = runner()
        pending = asyncio.create_task(client.request(b"op"))
        await asyncio.sleep(0)
        replicas.answer(0, refusal("malformed_request", Refusal.FINAL))
        replicas.answer(1, refusal("malformed_request", Refusal.FINAL))
        with pytest.raises(RequestRefused, match=r"refused \(malformed_request\)"):
            await pending

    asyncio.run(scenario())


def test_a_callback_client_hears_of_a_request_not_accepted_within_the_grace():
    async def scenario() -> list:
        client, replicas = runner()
        done = asyncio.get_running_loop().create_future()
        client.submit(b"op", lambda value, error: done.set_result((value, error)))
        replicas.answer(0, refusal("stale_nonce"))
        replicas.answer(2, refusal("overloaded"))
        return await asyncio.wait_for(done, BOUND)

    assert asyncio.run(scenario()) == (None, "stale_nonce")


# -- the gateway -----------------------------------------------------------------------------


class RefusingRunner:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def request(self, op: bytes, *, grace: float | None = None) -> bytes:
        raise self.exc


@pytest.mark.parametrize(("exc", "status"), [
    (RequestNotAccepted(1, "stale_nonce"), "not_accepted"),
    (RequestRefused(1, "malformed"), "refused"),
])
def test_the_gateway_records_a_request_not_accepted_as_such_not_as_rejected(tmp_path, exc,
                                                                            status):
    config = generate_cluster(tmp_path / "c", 4, app="ledger", genesis={})
    gateway = Gateway(config)
    tid = b"t" * 32
    asyncio.run(gateway._send_one(RefusingRunner(exc), tid, b"raw"))
    assert gateway.outcome(tid) == {"status": status, "reason": exc.reason}


# -- the SDK ---------------------------------------------------------------------------------


ALICE = Wallet(KeyPair.from_seed(b"a" * 32))


@pytest.fixture
def config(tmp_path):
    return generate_cluster(tmp_path / "c", 4, app="ledger", genesis={ALICE.address: 1000})


def script(monkeypatch, answers: dict[int, tuple[int, dict]]) -> list[int]:
    """Replica ``r`` answers every HTTP request with ``answers[r]``; returns the list of
    replicas asked, in order."""
    asked: list[int] = []

    async def request(self, method, replica, path, body=None):
        asked.append(replica)
        return answers[replica]

    monkeypatch.setattr(LedgerClient, "_request", request)
    return asked


def refused(status: int, reason: str, detail: str = "") -> tuple[int, dict]:
    return status, {"error": reason, "detail": detail or reason}


async def submit(config) -> str:
    async with LedgerClient(config) as client:
        return await client.submit(ALICE.sign(b"\x00" * 32, ALICE.address, 5, 0))


def test_sdk_one_byzantine_final_reason_among_refusals_for_now_is_not_accepted(
        config, monkeypatch):
    script(monkeypatch, {0: refused(403, "bad_signature"),
                         **{r: refused(422, "insufficient_funds", "balance 0 < amount 5")
                            for r in (1, 2, 3)}})
    with pytest.raises(TxNotAccepted) as caught:
        asyncio.run(submit(config))
    assert caught.value.reason == "insufficient_funds"
    assert str(caught.value) == ("not accepted yet (insufficient_funds: balance 0 < amount 5);"
                                 " retry")


def test_sdk_refusals_for_now_from_every_replica_are_not_accepted(config, monkeypatch):
    script(monkeypatch, {r: refused(409, "stale_nonce") for r in range(4)})
    with pytest.raises(TxNotAccepted, match="stale_nonce"):
        asyncio.run(submit(config))


def test_sdk_f_plus_one_matching_final_refusals_are_refused_without_asking_more(
        config, monkeypatch):
    asked = script(monkeypatch, {r: refused(403, "bad_signature") for r in range(4)})
    with pytest.raises(TxRefused, match=r"^refused \(bad_signature\)$"):
        asyncio.run(submit(config))
    assert asked == [0, 1]


def test_sdk_a_refusing_replica_is_skipped_for_one_that_admits(config, monkeypatch):
    script(monkeypatch, {0: refused(422, "insufficient_funds"), 1: (202, {"tx_id": "ab"}),
                         2: refused(422, "insufficient_funds"), 3: (202, {"tx_id": "ab"})})
    assert asyncio.run(submit(config)) == "ab"


async def wait(config, timeout: float = 5.0):
    async with LedgerClient(config) as client:
        return await client.wait_committed("ab" * 32, timeout=timeout)


def test_sdk_confirms_a_tx_that_executes_after_a_gateway_reported_it_not_accepted(
        config, monkeypatch):
    monkeypatch.setattr(sdk, "NOT_ACCEPTED_GRACE_S", 60.0)
    committed = (200, {"status": "committed", "height": 5, "index": 0})
    script(monkeypatch, {0: (200, {"status": "not_accepted", "reason": "stale_nonce"}),
                         1: committed, 2: committed, 3: (404, {"error": "unknown_tx"})})
    done = asyncio.run(wait(config))
    assert (done.status, done.height, done.replicas) == ("committed", 5, (1, 2))


def test_sdk_reports_not_accepted_when_a_gateway_says_so_and_nothing_executes(
        config, monkeypatch):
    monkeypatch.setattr(sdk, "NOT_ACCEPTED_GRACE_S", GRACE)
    monkeypatch.setattr(sdk, "POLL_INTERVAL_S", 0.01)
    script(monkeypatch, {0: (200, {"status": "not_accepted", "reason": "overloaded"}),
                         **{r: (404, {"error": "unknown_tx"}) for r in (1, 2, 3)}})
    with pytest.raises(TxNotAccepted, match=r"not accepted yet \(overloaded\); retry"):
        asyncio.run(wait(config, timeout=30.0))


# -- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "code", "message"), [
    (TxRefused("bad_signature"), exit_codes.REFUSED, "refused (bad_signature)"),
    (TxNotAccepted("insufficient_funds", "balance 0 < amount 5"), exit_codes.NOT_ACCEPTED,
     "not accepted yet (insufficient_funds: balance 0 < amount 5); retry"),
])
def test_cli_transfer_says_refused_or_not_accepted_with_distinct_statuses(
        config, tmp_path, monkeypatch, capsys, exc, code, message):
    async def transfer(self, wallet, to, amount, *, timeout):
        raise exc

    monkeypatch.setattr(LedgerClient, "transfer", transfer)
    ALICE.save(tmp_path / "alice.key")
    status = main(["client", "--config", str(tmp_path / "c" / "cluster.toml"), "transfer",
                   "--wallet", str(tmp_path / "alice.key"), "--to", ALICE.address.hex(), "5"])
    assert (status, capsys.readouterr().err.strip()) == (code, message)


class RefusingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def request(self, op: bytes) -> bytes:
        raise self.exc

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("exc", "code", "message"), [
    (RequestRefused(7, "request_too_large"), exit_codes.REFUSED,
     "refused (request_too_large)"),
    (RequestNotAccepted(7, "overloaded"), exit_codes.NOT_ACCEPTED,
     "not accepted yet (overloaded); retry"),
])
def test_cli_put_says_refused_or_not_accepted_with_distinct_statuses(
        tmp_path, monkeypatch, capsys, exc, code, message):
    import phalanx.runtime.client_cli as client_cli

    async def open_client(config):
        return RefusingClient(exc)

    generate_cluster(tmp_path / "c", 4)
    monkeypatch.setattr(client_cli, "open_client", open_client)
    status = main(["client", "--config", str(tmp_path / "c" / "cluster.toml"), "put", "k", "v"])
    assert (status, capsys.readouterr().err.strip()) == (code, message)
