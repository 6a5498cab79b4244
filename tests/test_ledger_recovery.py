"""Recovery reads only what a core recovers from: the ledger's blocks and tx index (which
grow with history) are skipped by the store's cursor, in LMDB and in its write-ahead log."""

from __future__ import annotations

import hashlib

import pytest

from phalanx.core.quorum import Quorums
from phalanx.crypto.ed25519 import Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.ledger.state import Ledger, make_ledger_factory
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.statemachine.kv import KVStore
from phalanx.storage.lmdb_store import Store


@pytest.mark.parametrize("durable", [False, True])
def test_items_skip_whole_prefix_ranges_and_keep_their_neighbours(tmp_path, durable) -> None:
    store = Store(str(tmp_path / "s"), durable=durable, wal_bytes=1 << 16)
    keys = [b"I\x00a", b"La", b"Lb", b"Lb\x00\x01", b"Lb\xff\xff", b"Lc\x00", b"Lt" + bytes(32),
            b"Lr\x01", b"Lu", b"M", b"\xff\xffz", b"\xff\xff"]
    store.write([(k, b"v" + k) for k in keys[:6]])
    store.write([(k, b"v" + k) for k in keys[6:]])
    store.write([(b"La", None)])  # a deletion in the log hides the LMDB record too
    skipped = (b"Lb", b"Lt", b"Lr", b"\xff\xff")
    kept = [k for k, _ in store.items(skipped)]
    assert kept == [b"I\x00a", b"Lc\x00", b"Lu", b"M"]
    assert [k for k, _ in store.items()] == sorted(set(keys) - {b"La"})
    store.close()


def test_a_ledger_replica_declares_what_it_does_not_recover_from() -> None:
    keys = [KeyPair.from_seed(hashlib.sha256(b"r%d" % i).digest()) for i in range(4)]
    crypto = Ed25519NodeCrypto(0, keys[0], [k.public_key for k in keys])
    ledger = PbftReplica(0, Quorums.for_n(4), crypto, make_ledger_factory({}))
    assert ledger.recovery_skip == Ledger.recovery_skip == (b"Lb", b"Lt", b"Lr")
    assert PbftReplica(0, Quorums.for_n(4), crypto, KVStore).recovery_skip == ()
