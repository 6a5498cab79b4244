"""Trace mapping for ``phalanx bench --trace``: every row becomes a valid transfer."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.bench.trace import TraceError, keypair_for, load_trace, partition, sign
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result

TRACE = Path(__file__).parent / "data" / "eth_tx_2017_head300.csv"


def test_the_mapped_trace_executes_in_order_with_every_transfer_applied() -> None:
    trace = load_trace(TRACE)
    assert len(trace.txs) == 300 and trace.scale > 1 and 0 < trace.contention() <= 1
    ledger = Ledger(trace.genesis())
    results = ledger.apply([sign(tx, ledger.chain_id) for tx in trace.txs])
    assert all(decode_result(r).status == APPLIED for r in results)
    assert ledger.total_supply() == sum(tx.amount for tx in trace.txs)
    senders = {tx.sender for tx in trace.txs}
    assert all(ledger.account(keypair_for(s).public_key)[1] ==
               sum(1 for tx in trace.txs if tx.sender == s) for s in senders)
    owner = partition(trace, 2)
    assert set(owner) == senders and set(owner.values()) == {0, 1}
    # Balanced: the parts differ by at most the busiest sender's transfers.
    sizes = [sum(1 for tx in trace.txs if owner[tx.sender] == p) for p in (0, 1)]
    busiest = max(sum(1 for tx in trace.txs if tx.sender == s) for s in senders)
    assert sum(sizes) == 300 and abs(sizes[0] - sizes[1]) <= busiest
    assert partition(trace, 2) == owner  # every load generator computes the same
    assert keypair_for("0xabc").public_key == keypair_for("0xabc").public_key


def test_columns_and_amounts(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("from_address,to_address,value_raw\na,b,0\na,c,5\nb,,7\n")
    trace = load_trace(path)
    assert [(t.amount, t.nonce) for t in trace.txs] == [(1, 0), (5, 1)]
    assert trace.zero_amounts == 1 and trace.skipped == {"no_sender_or_recipient": 1}
    path.write_text("from_address,to_address,amount\na,b,1\n")
    with pytest.raises(TraceError, match="value"):
        load_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")
