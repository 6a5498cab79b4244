"""``phalanx demo`` (what ``make demo`` runs): a local 4-replica cluster under load through
a primary crash and a restart, with the checks at the end. :mod:`~phalanx.demo.ledger`
runs the ledger (the default: wallets, signed transfers, verified balances),
:mod:`~phalanx.demo.kv` the key-value store; both read their load through
:mod:`~phalanx.demo.load`.

A demo is a composition root like :mod:`phalanx.cluster`, whose
:class:`~phalanx.cluster.LocalCluster` it starts, and the client SDK it drives.
"""
