"""The ledger's performance work: the sparse Merkle tree against an independent reference,
lazy block-signature checks, and a short real ``phalanx bench --trace`` run."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.cluster import free_port_block
from phalanx.core.effects import Broadcast, Dropped, Persist
from phalanx.core.quorum import Quorums
from phalanx.crypto.ed25519 import Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.host.certificates import BlockCertifier, BlockSig, signed_bytes
from phalanx.ledger.smt import EMPTY, SparseMerkleTree, internal_hash, leaf_hash, verify_proof

TRACE = Path(__file__).parent / "data" / "eth_tx_2017_head300.csv"

# -- the sparse Merkle tree ---------------------------------------------------------------


def reference_root(items: dict[bytes, bytes], depth: int = 0) -> bytes:
    """The compact sparse Merkle root straight from its definition (smt.py's docstring):
    empty -> EMPTY, one leaf -> its leaf hash, else split on the bit at ``depth``."""
    if not items:
        return EMPTY
    if len(items) == 1:
        [(key, value)] = items.items()
        return leaf_hash(key, value)
    bit = lambda key: (key[depth // 8] >> (7 - depth % 8)) & 1  # noqa: E731
    left = {k: v for k, v in items.items() if not bit(k)}
    right = {k: v for k, v in items.items() if bit(k)}
    return internal_hash(reference_root(left, depth + 1), reference_root(right, depth + 1))


def _key(i: int) -> bytes:
    return hashlib.sha256(b"smt%d" % i).digest()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(batches=st.lists(st.dictionaries(st.integers(0, 300), st.binary(min_size=1, max_size=16),
                                        min_size=1, max_size=60), min_size=1, max_size=5))
def test_smt_root_equals_the_reference_definition_after_every_batch(batches) -> None:
    tree, state = SparseMerkleTree(), {}
    for batch in batches:
        items = {_key(i): v for i, v in batch.items()}
        tree = tree.update(items)
        state.update(items)
        assert tree.root_hash == reference_root(state)
    for i in range(0, 320, 7):
        value = state.get(_key(i))
        assert tree.get(_key(i)) == value
        assert verify_proof(tree.root_hash, _key(i), value, tree.prove(_key(i)))


def test_smt_keys_sharing_long_prefixes_and_bad_keys() -> None:
    # Keys that differ only in their last bits make the longest paths.
    base = bytes(31)
    items = {base + bytes([b]): bytes([b]) for b in (0, 1, 2, 128, 255)}
    tree = SparseMerkleTree().update(items)
    assert tree.root_hash == reference_root(items)
    assert all(verify_proof(tree.root_hash, k, v, tree.prove(k)) for k, v in items.items())
    with pytest.raises(ValueError, match="32 bytes"):
        tree.update({b"short": b"x"})


# -- lazy block-signature checks ------------------------------------------------------------

KEYS = [KeyPair.from_seed(hashlib.sha256(b"cert%d" % i).digest()) for i in range(4)]


class CountingCrypto(Ed25519NodeCrypto):
    __slots__ = ("verifications",)

    def verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        self.verifications += 1
        return super().verify(signer, data, sig)


def certifier(me: int = 0) -> tuple[BlockCertifier, CountingCrypto]:
    crypto = CountingCrypto(me, KEYS[me], [k.public_key for k in KEYS])
    crypto.verifications = 0
    return BlockCertifier(me, Quorums.for_n(4), crypto), crypto


def block_sig(replica: int, height: int, block_hash: bytes, forged: bool = False) -> BlockSig:
    signer = KEYS[(replica + 1) % 4] if forged else KEYS[replica]
    return BlockSig(height, block_hash, replica, signer.sign(signed_bytes(height, block_hash)))


def test_a_certificate_checks_only_the_2f_signatures_it_needs() -> None:
    cert, crypto = certifier()
    block = hashlib.sha256(b"block 1").digest()
    assert any(isinstance(e, Broadcast) for e in cert.sealed(1, block))
    assert cert.on_block_sig(1, block_sig(1, 1, block)) == []  # kept, not checked yet
    assert crypto.verifications == 0
    out = cert.on_block_sig(2, block_sig(2, 1, block))
    assert [type(e) for e in out] == [Persist] and crypto.verifications == 2
    assert cert.on_block_sig(3, block_sig(3, 1, block)) == []  # late: never checked
    assert crypto.verifications == 2
    assert [r for r, _ in cert.certificate(1).sigs] == [0, 1, 2]


def test_a_forged_block_signature_is_dropped_and_the_next_one_completes_it() -> None:
    cert, crypto = certifier()
    block = hashlib.sha256(b"block 1").digest()
    # Signatures that arrive before our own block are kept until we execute it.
    assert cert.on_block_sig(1, block_sig(1, 1, block, forged=True)) == []
    assert cert.on_block_sig(2, block_sig(2, 1, block)) == []
    out = cert.sealed(1, block)
    assert Dropped("bad_signature", 1) in out and cert.certificate(1) is None
    out = cert.on_block_sig(3, block_sig(3, 1, block))
    assert any(isinstance(e, Persist) for e in out)
    assert [r for r, _ in cert.certificate(1).sigs] == [0, 2, 3]
    assert crypto.verifications == 3  # the forged one, 2 and 3: each checked once
    assert all(crypto.verify(r, signed_bytes(1, block), s) for r, s in cert.certificate(1).sigs)


# -- a short real trace replay ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [[], ["--bundle", "1", "--unicast"]],
                         ids=["bundles-multicast", "one-per-request-unicast"])
def test_short_trace_replay_commits_every_row_and_reports_the_floor(tmp_path: Path,
                                                                    mode: list[str]) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--trace", str(TRACE),
         "--clients", "32", "--sender-window", "8", "--durability", "process",
         "--base-port", str(free_port_block(8)), "--dir", str(tmp_path / "work"),
         "--json", str(out), *mode],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    trace, verify = results["trace"], results["verify"]
    assert trace["rows"] == trace["replayed"] == trace["answered"] == 300
    assert results["committed_tx"] == trace["committed"] == 300 and trace["rejected"] == {}
    assert trace["finished"] is True and 0 < trace["contention"] <= 1
    assert (trace["bundle"], trace["multicast"]) == ((1, False) if mode else (16, True))
    assert results["safety"]["state_roots_equal"] and results["safety"]["logs_consistent"]
    assert results["throughput_tps"] > 0 and results["cpu_us_per_tx"] > 0
    # The floor follows from the verify cost measured in the same run.
    floor = verify["cores"] / (results["n"] * verify["us_per_verify"] * 1e-6)
    assert verify["floor_tps"] == pytest.approx(floor, rel=1e-3)
    assert verify["percent_of_floor"] == pytest.approx(
        100 * results["throughput_tps"] / floor, abs=0.2)
    assert 0 < verify["verify_share_of_replica_cpu"] <= 100
    assert "reached" in proc.stdout and "safety: state roots equal True" in proc.stdout


def test_a_sender_window_the_admission_rule_would_break_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--trace", str(TRACE),
         "--sender-window", "1000", "--dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "--sender-window must be 1..128" in proc.stderr
    assert not (tmp_path / "work" / "cluster.toml").exists()  # refused before starting
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--trace", str(TRACE),
         "--bundle", "257", "--dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "--bundle must be 1..256" in proc.stderr


def test_random_updates_of_many_accounts_match_the_reference() -> None:
    rng = random.Random(5)
    tree, state = SparseMerkleTree(), {}
    for _ in range(4):
        batch = {_key(rng.randrange(2000)): rng.randbytes(16) for _ in range(400)}
        tree = tree.update(batch)
        state.update(batch)
    assert tree.root_hash == reference_root(state)


# -- make demo ----------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_demo_runs_the_ledger_through_a_primary_crash_and_checks_everything() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "demo", "--duration", "3", "--wallets", "8"],
        capture_output=True, text=True, timeout=140,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "bob's balance: 250, Merkle proof checked against block" in out
    assert "SIGKILL replica 0" in out and "conserved" in out and "demo ok" in out


def test_the_ledger_ablation_patch_still_applies():
    """bench/ablation/run.sh patches a clone of HEAD (docs/ledger.md, "How much of the gap
    is the ledger's"); a change to the ledger that breaks the patch must show here, not
    the next time someone measures."""
    repo = Path(__file__).resolve().parent.parent
    patch = repo / "bench" / "ablation" / "ledger.patch"
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    check = subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
