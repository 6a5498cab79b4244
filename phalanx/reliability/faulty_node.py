"""A deliberately faulty replica, for the crash torture's self-test — never for real use.

``python -m phalanx.reliability.faulty_node diverge node --config C --id I`` runs the
ordinary ``phalanx node`` command with one bug planted: ``diverge`` makes execution
credit one extra unit to the recipient of every transfer whose amount is a multiple of
:data:`DIVERGE_EVERY`, so this replica's balances, state roots and blocks leave the
others' (a non-deterministic or buggy state machine). The harness must report it.
"""

from __future__ import annotations

import sys

DIVERGE_EVERY = 50
FAULTS = ("diverge",)


def plant_divergence() -> None:
    from phalanx.ledger import tx as txm
    from phalanx.ledger.state import Ledger

    execute = Ledger._execute

    def diverging_execute(self: Ledger, op: bytes, tid: bytes) -> str | None:
        reason = execute(self, op, tid)
        tx = txm.decode_tx(op)
        if reason is None and isinstance(tx, txm.Transfer) and tx.amount % DIVERGE_EVERY == 0:
            self.accounts[tx.to][0] += 1
        return reason

    Ledger._execute = diverging_execute  # type: ignore[method-assign]  # the planted bug


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in FAULTS:
        print(f"usage: python -m phalanx.reliability.faulty_node {{{','.join(FAULTS)}}} "
              "node --config C --id I", file=sys.stderr)
        return 2
    plant_divergence()
    from phalanx.cli import main as phalanx_main

    return phalanx_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
