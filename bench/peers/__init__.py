"""Peer baselines: etcd and Indy Plenum run and loaded like ``phalanx bench`` (docs/peers.md)."""
