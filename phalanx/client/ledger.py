"""A light client of the ledger over the replicas' HTTP API.

It trusts no single replica: a balance is accepted only with a Merkle proof that checks
against the state root of a block header carrying 2f+1 valid replica signatures (or,
at height 0, against the genesis it computes from the cluster config itself); a
transaction counts as committed once f+1 replicas report it committed in the same
block of their durable tx index (so at least one correct replica executed it there).
Likewise a transaction is reported refused for good (:class:`TxRefused`) only when f+1
replicas refuse it for the same final reason; any other refusal is "not accepted yet"
(:class:`TxNotAccepted`), never a failure (docs/ledger.md, "Refusals").

The replica that admitted a transaction (its *gateway*) may die before the cluster
ordered it. While waiting, the client notices that no replica has a record of the
transaction any more and posts the same signed bytes to another replica
(:data:`RESUBMIT_GRACE_S`). That is safe: a transfer's nonce is used once, so if both
copies are ordered the second is rejected (``bad_nonce``) and the transaction's record
stays the first's ("committed", read before rejections).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from phalanx.config import ClusterConfig
from phalanx.core.quorum import Quorums
from phalanx.host.certificates import signed_bytes
from phalanx.ledger import tx as txm
from phalanx.ledger.block import BlockHeader
from phalanx.ledger.smt import Proof, verify_proof
from phalanx.ledger.state import Ledger, account_key, account_value
from phalanx.ledger.tx import Transfer

HTTP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
NOT_ACCEPTED_GRACE_S = 1.0
"""Seconds :meth:`LedgerClient.wait_committed` keeps polling after a gateway reported that
the cluster did not take a tx (see ``runtime.client.NOT_ACCEPTED_GRACE_S``)."""
RESUBMIT_GRACE_S = 1.0
"""Seconds :meth:`LedgerClient.wait_committed` waits, once no replica has a record of a
transaction it submitted (its gateway died or restarted before the cluster ordered it),
before it posts the same signed transaction to another replica."""
SUBMISSIONS_KEPT = 10_000
"""Submitted transactions a client remembers (to resubmit them while it waits)."""


class LedgerError(Exception):
    """The cluster could not answer (or no answer verified)."""


class TxRefused(LedgerError):
    """Refused for good: f+1 replicas refused the transaction for the same reason, one
    that no later state can cure (``ledger.tx.FINAL_REFUSALS``: malformed, bad signature,
    amount not positive). One of them is correct, so every correct replica refuses it and
    it can never execute."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"refused ({_explained(reason, detail)})")
        self.reason = reason
        self.detail = detail


class TxNotAccepted(LedgerError):
    """Not accepted yet: no replica admitted the transaction, but not for a reason that
    proves it can never execute — a stale or far nonce or missing funds are judged on
    each replica's executed state, which may lag (and f replicas may lie) — or the
    replica that admitted it reports that the cluster did not take it. Retry (the same
    signed transfer cannot execute twice: its nonce is used once)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"not accepted yet ({_explained(reason, detail)}); retry")
        self.reason = reason
        self.detail = detail


def _explained(reason: str, detail: str) -> str:
    return f"{reason}: {detail}" if detail and detail != reason else reason


def judge_refusals(refusals: list[tuple[str, str]], quorums: Quorums) -> LedgerError:
    """What refusals ``(reason, detail)`` from distinct replicas allow a client to say:
    :class:`TxRefused` if f+1 give the same final reason (one of them is correct),
    otherwise :class:`TxNotAccepted` with the reason most of them gave."""
    counts = Counter(reason for reason, _ in refusals)
    details: dict[str, str] = {}
    for reason, detail in refusals:
        details.setdefault(reason, detail)
    for reason, count in counts.items():
        if reason in txm.FINAL_REFUSALS and count >= quorums.weak:
            return TxRefused(reason, details[reason])
    [(reason, _)] = counts.most_common(1)
    return TxNotAccepted(reason, details[reason])


class ProofError(LedgerError):
    """A replica's answer did not verify."""


@dataclass(frozen=True, slots=True)
class VerifiedAccount:
    address: bytes
    balance: int
    nonce: int
    height: int  # the certified block the proof is against
    state_root: bytes
    signers: tuple[int, ...]  # replicas whose signatures certified the block (() at genesis)
    replica: int  # who answered


@dataclass(slots=True)
class _Submission:
    body: dict[str, Any]  # the signed transfer, as posted
    gateway: int  # the replica that admitted it last


@dataclass(frozen=True, slots=True)
class Confirmation:
    tx_id: str
    status: str  # "committed" or "rejected"
    height: int
    reason: str
    replicas: tuple[int, ...]  # the f+1 (or more) replicas that agree


class LedgerClient:
    """Talks to every replica of ``config``'s cluster. Use as ``async with``."""

    def __init__(self, config: ClusterConfig, *, timeout: float = HTTP_TIMEOUT_S) -> None:
        if config.app != "ledger":
            raise ValueError(f"the cluster runs app {config.app!r}, not the ledger")
        self.config = config
        self.q = config.quorums
        genesis = Ledger(config.genesis)
        self.chain_id = genesis.chain_id
        self.genesis_hash = genesis.genesis_header().hash()
        self._verify_keys = [VerifyKey(k) for k in config.public_keys]
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._submitted: OrderedDict[str, _Submission] = OrderedDict()

    async def __aenter__(self) -> LedgerClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -------------------------------------------------------------------------------

    def _url(self, replica: int, path: str) -> str:
        info = self.config.replica(replica)
        return f"http://{info.host}:{info.http_port}{path}"

    async def _request(self, method: str, replica: int, path: str,
                       body: Any = None) -> tuple[int, Any]:
        if self._session is None:
            raise RuntimeError("use 'async with LedgerClient(...)'")
        async with self._session.request(method, self._url(replica, path), json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    # -- queries ----------------------------------------------------------------------------

    async def account(self, address: bytes) -> VerifiedAccount:
        """Balance and nonce of ``address``, verified (see the module docstring); asks
        the replicas in turn until one answer verifies."""
        problems = []
        for replica in range(self.config.n):
            try:
                status, body = await self._request("GET", replica, f"/account/{address.hex()}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problems.append(f"replica {replica}: {type(exc).__name__}")
                continue
            if status != 200:
                problems.append(f"replica {replica}: HTTP {status} {body.get('error')}")
                continue
            try:
                return self.verify_account(address, body, replica)
            except (ProofError, KeyError, TypeError, ValueError) as exc:
                problems.append(f"replica {replica}: did not verify: {exc}")
        raise LedgerError("no verified answer: " + "; ".join(problems))

    async def account_from(self, address: bytes, replica: int) -> VerifiedAccount:
        """Balance and nonce of ``address`` as ``replica`` answers, verified; raises
        :class:`ProofError` if the answer does not verify and :class:`LedgerError` if
        the replica has no answer (to compare what one replica proves at one height)."""
        status, body = await self._request("GET", replica, f"/account/{address.hex()}")
        if status != 200:
            raise LedgerError(f"replica {replica}: HTTP {status} {body.get('error')}")
        return self.verify_account(address, body, replica)

    def verify_account(self, address: bytes, body: dict[str, Any], replica: int = -1
                       ) -> VerifiedAccount:
        """Check one ``GET /account`` answer; raises :class:`ProofError` if it does not
        verify against the cluster's keys (or genesis)."""
        header = BlockHeader.from_json(body["header"])
        if header.chain_id != self.chain_id:
            raise ProofError("header of another chain")
        block_hash = header.hash()
        signers: tuple[int, ...] = ()
        if header.height == 0:
            if block_hash != self.genesis_hash:
                raise ProofError("height 0 but not our genesis")
        else:
            signers = self.verify_certificate(header, body.get("certificate"))
        balance, nonce = body["balance"], body["nonce"]
        if body.get("height") != header.height:
            raise ProofError("answer height differs from its header")
        value = None if body["value"] is None else account_value(balance, nonce)
        if value is None and (balance, nonce) != (0, 0):
            raise ProofError("absent account with a non-zero balance or nonce")
        if not verify_proof(header.state_root, account_key(address), value,
                            Proof.from_json(body["proof"])):
            raise ProofError("Merkle proof does not match the certified state root")
        return VerifiedAccount(address, balance, nonce, header.height, header.state_root,
                               signers, replica)

    def verify_certificate(self, header: BlockHeader, cert: Any) -> tuple[int, ...]:
        """The replicas whose valid signatures certify ``header`` (at least 2f+1)."""
        if not isinstance(cert, dict):
            raise ProofError("no commit certificate")
        block_hash = header.hash()
        if cert.get("height") != header.height or cert.get("block_hash") != block_hash.hex():
            raise ProofError("certificate is for another block")
        message = signed_bytes(header.height, block_hash)
        signers = set()
        for entry in cert.get("sigs", []):
            replica = entry.get("replica")
            if type(replica) is not int or not 0 <= replica < self.config.n:
                continue
            try:
                self._verify_keys[replica].verify(message, bytes.fromhex(entry.get("sig", "")))
            except (BadSignatureError, ValueError, TypeError):
                continue
            signers.add(replica)
        if len(signers) < self.q.strong:
            raise ProofError(f"only {len(signers)} valid signatures, need {self.q.strong}")
        return tuple(sorted(signers))

    # -- transactions -----------------------------------------------------------------------

    async def submit(self, tx: Transfer) -> str:
        """POST ``tx``; returns its id (hex). Asks the replicas in turn until one admits
        it: one replica's refusal may be a lagging or a lying one. Raises
        :class:`TxRefused` once f+1 refused it for the same final reason, and
        :class:`TxNotAccepted` if none admitted it otherwise (see :func:`judge_refusals`).
        The client remembers the transaction and the replica that admitted it, so that
        :meth:`wait_committed` can resubmit it should that replica die."""
        body = {"from": tx.sender.hex(), "to": tx.to.hex(), "amount": tx.amount,
                "nonce": tx.nonce, "signature": tx.signature.hex()}
        tx_id, replica = await self._post_tx(body, list(range(self.config.n)))
        self._submitted.pop(tx_id, None)
        self._submitted[tx_id] = _Submission(body, replica)
        while len(self._submitted) > SUBMISSIONS_KEPT:
            self._submitted.popitem(last=False)
        return tx_id

    async def _post_tx(self, body: dict[str, Any], replicas: list[int]) -> tuple[str, int]:
        """POST ``body`` to ``replicas`` in turn until one admits it: its tx id and the
        replica. Raises as :meth:`submit` says if none does."""
        refusals: list[tuple[str, str]] = []
        for replica in replicas:
            try:
                status, answer = await self._request("POST", replica, "/tx", body)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if not isinstance(answer, dict):
                answer = {}
            if status == 202 and "tx_id" in answer:
                return str(answer["tx_id"]), replica
            refusals.append((str(answer.get("error", f"HTTP {status}")),
                             str(answer.get("detail", ""))))
            verdict = judge_refusals(refusals, self.q)
            if isinstance(verdict, TxRefused):
                raise verdict  # the other replicas can only say the same
        if not refusals:
            raise LedgerError("no replica answered")
        raise judge_refusals(refusals, self.q)

    async def wait_committed(self, tx_id: str, timeout: float = 30.0) -> Confirmation:
        """Poll every replica until f+1 agree on the tx's fate (committed or rejected,
        same block); TimeoutError otherwise. If a replica's gateway reports that the
        cluster did not take the tx (``refused`` or ``not_accepted``: one replica's word,
        so never more than "not yet"), polling goes on for NOT_ACCEPTED_GRACE_S, in case
        it executes after all, then :class:`TxNotAccepted` is raised.

        A tx this client submitted that no replica has a record of for
        RESUBMIT_GRACE_S (its gateway died, or restarted, before the cluster ordered it)
        is posted again, the same signed bytes, to another replica (see the module
        docstring); if no replica admits it again, that counts as "not taken" above."""
        deadline = time.monotonic() + timeout
        not_taken: tuple[str, float] | None = None  # (reason, when first reported)
        submission = self._submitted.get(tx_id)
        unknown_since: float | None = None  # when no replica had a record any more
        while True:
            answers = await asyncio.gather(
                *(self._request("GET", r, f"/tx/{tx_id}") for r in range(self.config.n)),
                return_exceptions=True,
            )
            votes: dict[tuple[str, int, str], list[int]] = {}
            recorded = False
            for replica, answer in enumerate(answers):
                if isinstance(answer, BaseException) or answer[0] != 200:
                    continue
                body = answer[1]
                if not isinstance(body, dict):
                    continue
                recorded = True
                if body.get("status") in ("committed", "rejected") and "height" in body:
                    key = (body["status"], body["height"], body.get("reason", ""))
                    votes.setdefault(key, []).append(replica)
                elif body.get("status") in ("refused", "not_accepted") and not_taken is None:
                    not_taken = (str(body.get("reason", "")), time.monotonic())
            for (status, height, reason), replicas in votes.items():
                if len(replicas) >= self.q.weak:
                    self._submitted.pop(tx_id, None)
                    return Confirmation(tx_id, status, height, reason, tuple(replicas))
            now = time.monotonic()
            if submission is not None and not recorded and not_taken is None:
                unknown_since = unknown_since or now
                if now - unknown_since >= RESUBMIT_GRACE_S:
                    unknown_since = None
                    unreachable = {r for r, a in enumerate(answers)
                                   if isinstance(a, BaseException)}
                    not_taken = await self._resubmit(submission, unreachable)
            else:
                unknown_since = None
            if not_taken is not None and now > not_taken[1] + NOT_ACCEPTED_GRACE_S:
                raise TxNotAccepted(not_taken[0])
            if now > deadline:
                raise TimeoutError(f"tx {tx_id} not confirmed by f+1={self.q.weak} replicas "
                                   f"within {timeout} s")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _resubmit(self, submission: _Submission, unreachable: set[int]
                        ) -> tuple[str, float] | None:
        """Post a lost submission to the replicas after its gateway (reachable ones
        first); None once one admits it, else the reason it was not taken, and when."""
        n = self.config.n
        after = [(submission.gateway + k) % n for k in range(1, n)]
        order = [r for r in after if r not in unreachable] + [
            r for r in after if r in unreachable]
        try:
            _, submission.gateway = await self._post_tx(submission.body, order)
        except LedgerError as exc:
            return (getattr(exc, "reason", "no_replica_answered"), time.monotonic())
        return None

    async def transfer(self, wallet: Any, to: bytes, amount: int, *,
                       timeout: float = 30.0) -> Confirmation:
        """Sign and submit a transfer from ``wallet`` with its next nonce, and wait for
        f+1 confirmations. The nonce comes from the verified account; if the certified
        state lags (an earlier transfer not certified yet), the next nonce is tried."""
        account = await self.account(wallet.address)
        nonce = account.nonce
        for _ in range(8):
            tx = wallet.sign(self.chain_id, to, amount, nonce)
            try:
                tx_id = await self.submit(tx)
            except TxNotAccepted as exc:
                if exc.reason == txm.STALE_NONCE:
                    nonce += 1
                    continue
                raise
            return await self.wait_committed(tx_id, timeout)
        raise LedgerError("could not find a fresh nonce (is another client using the wallet?)")
