"""Generate a loopback Indy Plenum pool (runs in the Python 3.8 Plenum venv).

``python pool.py --dir POOL --nodes 4 --base-port 9700`` writes into ``POOL``:

- ``indy_config.py``: Plenum's general config, every directory inside ``POOL`` (Plenum's
  defaults are /etc/indy and /var/lib/indy) and the validator-info dump every few
  seconds (the bench reads ledger sizes and root hashes from it);
- the genesis pool and domain ledgers (one trustee, one steward per node) and every
  node's keys, via Plenum's own ``TestNetworkSetup`` (what ``generate_plenum_pool_transactions``
  does, without touching /etc/indy);
- ``pool.json``: what the bench and the client need: per node its name, node and client
  ports and client-stack public key (Curve25519, z85), per steward its DID and seed.

Batching stays at Plenum's defaults (``Max3PCBatchSize`` 1000, ``Max3PCBatchWait`` 3 s).
"""

import argparse
import json
import os
import sys

NETWORK = "bench"


def write_config(pool_dir: str, info_period_s: int) -> str:
    """The indy_config.py that puts all of Plenum's state under ``pool_dir``."""
    path = os.path.join(pool_dir, "indy_config.py")
    with open(path, "w") as f:
        f.write(
            "# written by bench/peers/plenum38/pool.py\n"
            "NETWORK_NAME = {net!r}\n"
            "LEDGER_DIR = {d!r}\n"
            "LOG_DIR = {log!r}\n"
            "KEYS_DIR = {d!r}\n"
            "GENESIS_DIR = {d!r}\n"
            "BACKUP_DIR = {backup!r}\n"
            "PLUGINS_DIR = {plugins!r}\n"
            "NODE_INFO_DIR = {d!r}\n"
            "DUMP_VALIDATOR_INFO_INIT_SEC = 1\n"
            "DUMP_VALIDATOR_INFO_PERIOD_SEC = {period}\n"
            "enableStdOutLogging = False\n"
            "import logging\n"
            "logLevel = logging.INFO\n".format(
                net=NETWORK,
                d=os.path.join(pool_dir, "data"),
                log=os.path.join(pool_dir, "logs"),
                backup=os.path.join(pool_dir, "backup"),
                plugins=os.path.join(pool_dir, "plugins"),
                period=info_period_s,
            )
        )
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="pool directory (created; must be absolute)")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--base-port", type=int, default=9700)
    p.add_argument("--info-period", type=int, default=2,
                   help="seconds between validator-info dumps")
    args = p.parse_args(argv)
    pool_dir = os.path.abspath(args.dir)
    for sub in ("data", "logs", "backup", "plugins"):
        os.makedirs(os.path.join(pool_dir, sub), exist_ok=True)
    write_config(pool_dir, args.info_period)

    # Plenum reads its config once, from GENERAL_CONFIG_DIR; import it only now.
    from plenum.common.config_util import getConfig
    from plenum.common.test_network_setup import TestNetworkSetup
    from plenum.common.txn_util import getTxnOrderedFields
    from stp_core.crypto.util import ed25519PkToCurve25519
    from zmq.utils.z85 import encode as z85_encode

    config = getConfig(general_config_dir=pool_dir)
    stewards, nodes = TestNetworkSetup.gen_defs(None, args.nodes, args.base_port)
    trustee = TestNetworkSetup.gen_trustee_def(1)
    TestNetworkSetup.bootstrapTestNodesCore(
        config, NETWORK, False, getTxnOrderedFields(), trustee, stewards, nodes, [],
        set(range(1, args.nodes + 1)), "plenum.env",
    )
    doc = {
        "network": NETWORK,
        "f": (args.nodes - 1) // 3,
        "nodes": [
            {
                "name": nd.name,
                "ip": nd.ip,
                "port": nd.port,
                "client_port": nd.client_port,
                # The client stack's CurveZMQ key is the node's Ed25519 verkey mapped to
                # Curve25519, which is what libindy derives from the pool ledger too.
                "client_public_key": z85_encode(
                    ed25519PkToCurve25519(bytes.fromhex(nd.verkey.decode()))
                ).decode(),
            }
            for nd in nodes
        ],
        "stewards": [
            {"name": sd.name, "did": sd.nym, "verkey": sd.verkey, "seed": sd.sigseed.decode()}
            for sd in stewards
        ],
    }
    with open(os.path.join(pool_dir, "pool.json"), "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps({"pool": pool_dir, "nodes": [n["name"] for n in doc["nodes"]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
