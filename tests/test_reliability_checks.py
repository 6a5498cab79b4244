"""The crash torture's checks (phalanx/reliability/checks.py) on doubles: each must pass a
consistent cluster and name each kind of damage — a lost acknowledged transfer, a wrong
balance, divergent blocks, a lost tx index record, an acknowledged block held by too few
replicas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phalanx.ledger.state import Ledger, block_key
from phalanx.reliability import wallets as plan
from phalanx.reliability.checks import (
    BlockAudit,
    Findings,
    LoadRecord,
    StoreReader,
    check_agreement,
    check_state,
    read_journal,
)

SEED, WALLETS, F = 7, 4, 1


def journal(tmp_path: Path, events: list[dict]) -> LoadRecord:
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"ev": "ack", "w"')
    return read_journal(path, WALLETS)  # the torn last line is skipped


def ack(w: int, n: int, h: int) -> dict:
    return {"ev": "ack", "w": w, "n": n, "h": h, "t": 100.0 + n, "lat": 0.01}


def accounts_after(nonces: list[int]) -> list[tuple[int, int] | None]:
    balances = plan.expected_balances(SEED, WALLETS, nonces)
    return list(zip(balances, nonces, strict=True))


def test_journal_keeps_acks_by_wallet_and_nonce_and_the_end_line(tmp_path: Path) -> None:
    record = journal(tmp_path, [ack(0, 0, 1), {"ev": "consumed", "w": 0, "n": 1},
                                ack(0, 2, 3), {"ev": "retry"}, ack(2, 0, 1),
                                {"ev": "end", "sent": [3, 0, 1, 0], "unfinished": 0}])
    assert list(record.acked()) == [(0, 0, 1), (0, 2, 3), (2, 0, 1)]
    assert (record.acks, record.consumed, record.retries) == (3, 1, 1)
    assert record.sent == [3, 0, 1, 0]
    assert record.last_acked(0) == 2 and record.last_acked(1) == -1


def test_state_that_follows_the_acknowledgements_passes(tmp_path: Path) -> None:
    record = journal(tmp_path, [ack(0, 0, 1), ack(0, 1, 2), ack(1, 0, 1),
                                {"ev": "end", "sent": [3, 1, 0, 0]}])
    findings = Findings()
    # Wallet 0's third transfer was sent, never acknowledged, and applied: allowed.
    check_state(findings, SEED, record, {r: accounts_after([3, 1, 0, 0]) for r in range(4)})
    assert not findings


def test_state_missing_an_acknowledged_transfer_is_reported(tmp_path: Path) -> None:
    record = journal(tmp_path, [ack(0, 0, 1), ack(0, 1, 2), {"ev": "end", "sent": [2, 0, 0, 0]}])
    findings = Findings()
    state = {0: accounts_after([2, 0, 0, 0]), 1: accounts_after([1, 0, 0, 0])}
    check_state(findings, SEED, record, state)
    assert findings.counts == {"acked_lost": 1, "divergent_accounts": 1}
    assert "replica 1: wallet 0 is at nonce 1" in findings.items["acked_lost"][0]


def test_a_balance_off_by_one_and_a_transfer_never_sent_are_reported(tmp_path: Path) -> None:
    record = journal(tmp_path, [{"ev": "end", "sent": [1, 0, 0, 0]}])
    state = accounts_after([1, 0, 0, 0])
    balance, nonce = state[3]  # type: ignore[misc]
    state[3] = (balance + 1, nonce)
    findings = Findings()
    check_state(findings, SEED, record, {0: state, 1: accounts_after([2, 0, 0, 0])})
    assert set(findings.counts) == {"balance", "phantom", "divergent_accounts"}


def test_agreement_tells_divergence_from_lagging() -> None:
    same = {"executed_seq": 9, "state_root": "aa", "block_hash": "cc"}
    findings = Findings()
    check_agreement(findings, {0: same, 1: same, 2: {**same, "state_root": "bb"}})
    assert list(findings.counts) == ["divergent_roots"]
    findings = Findings()  # equal accounts reached through different histories
    check_agreement(findings, {0: same, 1: {**same, "block_hash": "dd"}})
    assert list(findings.counts) == ["divergent_roots"]
    findings = Findings()
    check_agreement(findings, {0: same, 1: {**same, "executed_seq": 8}, 2: None})
    assert set(findings.counts) == {"not_converged", "unreachable"}


# -- blocks on disk -----------------------------------------------------------------------


class FakeStore(dict):
    """What StoreReader needs of a Store: get()."""


def chain(blocks: int) -> tuple[FakeStore, list[list[tuple[int, int]]]]:
    """A store with ``blocks`` blocks of the plan's transfers; the (wallet, nonce) of
    each block's transfers."""
    genesis = plan.genesis(SEED, WALLETS)
    ledger = Ledger(genesis)
    store = FakeStore()
    contents = []
    for height in range(1, blocks + 1):
        nonce = height - 1  # each wallet sends one transfer per block
        ops, made = [], []
        for wallet in range(WALLETS):
            raw, _ = plan.signed_transfer(SEED, WALLETS, ledger.chain_id, wallet, nonce)
            ops.append(raw)
            made.append((wallet, nonce))
        ledger.apply(ops)
        sealed = ledger.seal_block(height)
        assert sealed is not None and sealed.height == height
        store.update(sealed.records)
        contents.append(made)
    return store, contents


def audit(stores: dict[int, FakeStore], events: list[dict], tmp_path: Path) -> Findings:
    record = journal(tmp_path, events)
    index = {plan.wallet(SEED, i).public_key: i for i in range(WALLETS)}
    findings = Findings()
    BlockAudit(SEED, F, record, index).run(
        findings, {r: StoreReader(s) for r, s in stores.items()}, height_hint=3)
    return findings


def test_identical_stores_holding_every_acknowledged_transfer_pass(tmp_path: Path) -> None:
    store, contents = chain(3)
    acks = [ack(w, n, h + 1) for h, made in enumerate(contents) for w, n in made]
    findings = audit({r: FakeStore(store) for r in range(4)}, acks, tmp_path)
    assert not findings, findings.to_json()


def test_a_replica_whose_block_differs_is_reported(tmp_path: Path) -> None:
    store, _ = chain(3)
    replaced = FakeStore(store)
    replaced[block_key(2)] = store[block_key(3)]  # another block's bytes at height 2
    findings = audit({0: FakeStore(store), 1: FakeStore(store), 2: replaced}, [], tmp_path)
    assert findings.counts["divergent_blocks"] == 1
    assert findings.counts["broken_chain"] >= 1
    assert "block 2: replicas [0, 1]" in findings.items["divergent_blocks"][0]


def test_a_lost_tx_index_record_is_reported(tmp_path: Path) -> None:
    store, _ = chain(3)
    lossy = FakeStore(store)
    del lossy[next(k for k in lossy if k.startswith(b"Lt"))]
    findings = audit({0: FakeStore(store), 1: lossy}, [], tmp_path)
    assert findings.counts == {"tx_index_lost": 1}
    assert findings.items["tx_index_lost"][0].startswith("replica 1:")


def test_an_acknowledged_block_on_fewer_than_f_plus_1_disks_is_reported(tmp_path: Path) -> None:
    store, contents = chain(3)
    gap = FakeStore(store)
    del gap[block_key(2)]  # skipped by a state transfer: allowed on one replica ...
    acks = [ack(w, n, 2) for w, n in contents[1]]
    assert not audit({0: FakeStore(store), 1: gap, 2: FakeStore(store)}, acks, tmp_path)
    # ... but an acknowledged block that only one replica holds was not durable at f+1.
    findings = audit({0: FakeStore(store), 1: gap, 2: FakeStore(gap)}, acks, tmp_path)
    assert findings.counts == {"acked_not_durable": WALLETS}


def test_a_transfer_acknowledged_in_another_block_than_it_is_in_is_reported(
    tmp_path: Path,
) -> None:
    store, contents = chain(3)
    wallet, nonce = contents[0][0]
    findings = audit({0: FakeStore(store), 1: FakeStore(store)}, [ack(wallet, nonce, 3)],
                     tmp_path)
    assert set(findings.counts) == {"acked_elsewhere", "acked_not_durable"}


def test_store_reader_finds_the_top_block_without_a_hint() -> None:
    store, _ = chain(3)
    del store[block_key(1)]
    assert StoreReader(store).top() == 3
    assert StoreReader(FakeStore()).top() == 0


def test_a_commit_pause_that_outlasts_its_cycle_counts_whole() -> None:
    from phalanx.reliability.common import ack_rate_gaps

    acks = [1.0, 1.1, 5.0, 5.1]
    # Killed at 0.9, next kill at 2.0, commits back at 5.0: the pause is 3.9 s, not 0.2.
    pauses = list(ack_rate_gaps(acks, [(0.9, 2.0), (5.05, 9.0), (6.0, 9.0)]))
    assert pauses[0] == pytest.approx(3.9) and pauses[1] == pytest.approx(0.05)
    assert pauses[2] is None  # nothing committed after it
