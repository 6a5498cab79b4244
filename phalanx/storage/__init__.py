"""Durable storage: the LMDB-backed replica log."""

from phalanx.storage.lmdb_store import Store

__all__ = ["Store"]
