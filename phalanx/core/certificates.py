"""Commit certificates for blocks: replicas sign each executed block's header hash.

After executing a batch that became a block, a replica signs ``(height, block hash)``
and broadcasts it as :class:`BlockSig`; 2f+1 matching signatures from distinct replicas
are the block's commit certificate. A client holding the cluster's public keys can then
check a block (and the state root in its header) without trusting any single replica.

:class:`BlockCertifier` is the protocol-independent collector a replica core hosts. It
is pure (no I/O): it returns effects, and its certificates are persisted with ``Persist``.
Signatures for heights this replica has not executed yet are kept (within a bounded
window ahead, one per replica and height) until its own block arrives, so a slower
replica still certifies; a signature that disagrees with our own block hash is dropped
and counted.

A replica that missed signatures (it was down, or executed blocks after the others had
certified them, or adopted a checkpoint's state by state transfer) fetches the
certificates instead: every ``CERT_TICK`` seconds the host asks (:meth:`tick`) for heights
that were already waiting at the previous tick, with :class:`FetchCertificates`; a peer
answers with the :class:`Certificates` it holds, and each is adopted only if 2f+1 valid
signatures of distinct replicas vouch for the very block hash this replica computed (or
learned from a checkpoint-proven snapshot).

Signatures are verified lazily, when a certificate can form, and only as many as it
needs: 2f of them besides our own (n - 1 - 2f fewer Ed25519 verifications per block than
checking each on arrival; a late one for a certified block is never checked). An invalid
one is then dropped and counted, and the next candidate is checked instead.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import Broadcast, Dropped, Persist, Send
from phalanx.core.messages import Digest, NonNegative
from phalanx.core.quorum import Quorums

SIGNING_DOMAIN = b"phalanx-block-v1"
AHEAD_WINDOW = 1024
"""Heights above our own that we keep other replicas' signatures for."""
KEEP_CERTIFICATES = 256
"""Recent certificates kept in memory (older ones are in the store)."""
CERT_PREFIX = b"Lc"
CERT_TICK = 1.0
"""Seconds between checks for blocks still waiting for their certificate."""
MAX_FETCH = 64
"""Certificates asked for (and answered) in one message."""


class BlockSig(msgspec.Struct, tag=39, array_like=True, frozen=True, gc=False):
    """Replica ``replica`` executed block ``height`` with header hash ``block_hash``."""

    height: NonNegative
    block_hash: Digest
    replica: NonNegative
    sig: bytes


class Certificate(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """2f+1 signatures of distinct replicas over one block hash."""

    height: int
    block_hash: bytes
    sigs: list[tuple[int, bytes]]


class FetchCertificates(msgspec.Struct, tag=37, array_like=True, frozen=True, gc=False):
    """Send me your certificates of these heights (at most ``MAX_FETCH``)."""

    heights: list[int]


class Certificates(msgspec.Struct, tag=38, array_like=True, frozen=True, gc=False):
    """Certificates the sender holds, answering a :class:`FetchCertificates`."""

    certs: list[Certificate]


def signed_bytes(height: int, block_hash: bytes) -> bytes:
    return SIGNING_DOMAIN + height.to_bytes(8, "big") + block_hash


def cert_key(height: int) -> bytes:
    return CERT_PREFIX + height.to_bytes(8, "big")


def encode_certificate(cert: Certificate) -> bytes:
    return msgspec.msgpack.encode(cert)


def decode_certificate(raw: bytes) -> Certificate:
    return msgspec.msgpack.decode(raw, type=Certificate)


class BlockCertifier:
    """Signs this replica's blocks and collects the others' signatures into certificates."""

    def __init__(self, replica_id: int, quorums: Quorums, crypto: NodeCrypto) -> None:
        self.me = replica_id
        self.q = quorums
        self.crypto = crypto
        self.own: dict[int, bytes] = {}  # height -> our block hash, until certified
        # height -> replica -> (block hash, signature); ``verified`` holds the (height,
        # replica) pairs whose signature was checked (ours needs no check).
        self.pending: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self.verified: set[tuple[int, int]] = set()
        self.certificates: OrderedDict[int, Certificate] = OrderedDict()
        self.executed = 0  # our highest sealed height
        self.certified = 0  # highest certified height
        self.waited: set[int] = set()  # heights already uncertified at the last tick

    def recover(self, records: list[tuple[bytes, bytes]]) -> None:
        """Reload the most recent persisted certificates."""
        found = []
        for key, value in records:
            if key.startswith(CERT_PREFIX) and len(key) == len(CERT_PREFIX) + 8:
                found.append(value)
        for raw in found[-KEEP_CERTIFICATES:]:
            try:
                cert = decode_certificate(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self._remember(cert)

    def sealed(self, height: int, block_hash: bytes) -> list[Any]:
        """We executed block ``height``: sign it, broadcast, and check the signatures
        that arrived before it."""
        self.executed = max(self.executed, height)
        if height <= self.certified and height in self.certificates:
            return []  # re-executed after a restart: already certified
        sig = self.crypto.sign(signed_bytes(height, block_hash))
        self.own[height] = block_hash
        votes = self.pending.setdefault(height, {})
        votes[self.me] = (block_hash, sig)
        out: list[Any] = [Broadcast(BlockSig(height, block_hash, self.me, sig))]
        for replica in [r for r, (h, _) in votes.items() if h != block_hash]:
            del votes[replica]  # signed another block than the one we executed
            out.append(Dropped("block_sig_mismatch", replica))
        out.extend(self._try_certify(height))
        return out

    def on_block_sig(self, src: int, msg: BlockSig) -> list[Any]:
        if msg.replica != src or not 0 <= src < self.q.n or src == self.me:
            return [Dropped("unknown_sender", src)]
        height = msg.height
        # Range first: a height below 1 is garbage, not a late signature, and is counted.
        if not 0 < height <= self.executed + AHEAD_WINDOW:
            return [Dropped("block_sig_out_of_range", src)]
        if height in self.certificates or height <= self.certified - KEEP_CERTIFICATES:
            return []  # late: certified without it
        own = self.own.get(height)
        if own is not None and msg.block_hash != own:
            return [Dropped("block_sig_mismatch", src)]
        votes = self.pending.setdefault(height, {})
        if src in votes:
            return [Dropped("duplicate_vote", src)]
        votes[src] = (msg.block_hash, msg.sig)  # verified when it can complete a certificate
        return self._try_certify(height)

    def certificate(self, height: int) -> Certificate | None:
        return self.certificates.get(height)

    def expect(self, height: int, block_hash: bytes) -> list[Any]:
        """Block ``height`` has hash ``block_hash`` (from a snapshot proven by 2f+1
        checkpoint signatures): certify it from the others' signatures or certificates,
        without signing it ourselves."""
        self.executed = max(self.executed, height)
        if height <= 0 or height in self.certificates:
            return []
        self.own[height] = block_hash
        return self._try_certify(height)

    def waiting(self) -> bool:
        """Are blocks waiting for their certificate (the host keeps ticking while so)?"""
        return bool(self.own)

    def tick(self) -> list[Any]:
        """Ask the others for the certificates of blocks that were already waiting at the
        previous tick (those still collecting signatures are left alone)."""
        # Peers keep the last KEEP_CERTIFICATES certificates in memory: older ones are
        # not asked for forever (their blocks stay uncertified here; see docs/ledger.md).
        for old in [h for h in self.own if h <= self.certified - KEEP_CERTIFICATES]:
            del self.own[old]
            self.pending.pop(old, None)
        stale = sorted(h for h in self.own if h in self.waited)[:MAX_FETCH]
        self.waited = set(self.own)
        return [Broadcast(FetchCertificates(stale))] if stale else []

    def on_fetch(self, src: int, msg: FetchCertificates) -> list[Any]:
        if not 0 <= src < self.q.n or src == self.me or len(msg.heights) > MAX_FETCH:
            return [Dropped("bad_fetch", src)]
        certs = [c for c in map(self.certificates.get, set(msg.heights)) if c is not None]
        return [Send(src, Certificates(certs))] if certs else []

    def on_certificates(self, src: int, msg: Certificates) -> list[Any]:
        if not 0 <= src < self.q.n or src == self.me or len(msg.certs) > MAX_FETCH:
            return [Dropped("bad_certificates", src)]
        out: list[Any] = []
        for cert in msg.certs:
            own = self.own.get(cert.height)
            if own is None:
                continue  # certified meanwhile, or a block we do not know: nothing to check
            if cert.block_hash != own or not self._valid(cert):
                out.append(Dropped("bad_certificate", src))
                continue
            self._remember(cert)
            del self.own[cert.height]
            self.pending.pop(cert.height, None)
            out.append(Persist(cert_key(cert.height), encode_certificate(cert), lazy=True))
        return out

    def _valid(self, cert: Certificate) -> bool:
        """2f+1 valid signatures of distinct replicas over the certificate's block."""
        if not self.q.strong <= len(cert.sigs) <= self.q.n:
            return False  # a padded certificate cannot make us verify more than n
        signed = signed_bytes(cert.height, cert.block_hash)
        signers: set[int] = set()
        for replica, sig in cert.sigs:
            if replica in signers or type(replica) is not int or not 0 <= replica < self.q.n:
                return False
            if not self.crypto.verify(replica, signed, sig):  # ours too: it came from outside
                return False
            signers.add(replica)
            if len(signers) == self.q.strong:
                return True
        return False

    def _try_certify(self, height: int) -> list[Any]:
        own = self.own.get(height)
        votes = self.pending.get(height)
        if own is None or votes is None:
            return []
        out: list[Any] = []
        candidates = sorted(r for r, (h, _) in votes.items() if h == own)
        if len(candidates) < self.q.strong:
            return out
        # Ours first (never checked), then the others' in replica order, each checked
        # only if needed, until 2f+1 valid ones.
        candidates.sort(key=lambda r: (r != self.me, r))
        signed = signed_bytes(height, own)
        sigs: list[tuple[int, bytes]] = []
        for replica in candidates:
            sig = votes[replica][1]
            if replica != self.me and (height, replica) not in self.verified:
                if not self.crypto.verify(replica, signed, sig):
                    del votes[replica]
                    out.append(Dropped("bad_signature", replica))
                    continue
                self.verified.add((height, replica))
            sigs.append((replica, sig))
            if len(sigs) == self.q.strong:
                break
        if len(sigs) < self.q.strong:
            return out  # too many invalid ones: wait for more
        cert = Certificate(height, own, sorted(sigs))
        self._remember(cert)
        del self.own[height]
        del self.pending[height]
        self.verified = {(h, r) for h, r in self.verified if h > height}
        for old in [h for h in self.pending if h < height - AHEAD_WINDOW]:
            del self.pending[old]
        for old in [h for h in self.own if h < height - AHEAD_WINDOW]:
            del self.own[old]
        # Lazy: a certificate gates no message; lost in a crash, it is only missing locally.
        out.append(Persist(cert_key(height), encode_certificate(cert), lazy=True))
        return out

    def _remember(self, cert: Certificate) -> None:
        self.certificates[cert.height] = cert
        self.certified = max(self.certified, cert.height)
        while len(self.certificates) > KEEP_CERTIFICATES:
            self.certificates.popitem(last=False)
