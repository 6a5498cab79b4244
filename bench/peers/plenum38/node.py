"""Run one Indy Plenum node of a pool made by ``pool.py`` (Python 3.8 Plenum venv).

``python node.py --dir POOL --name Node1`` is Plenum's ``start_plenum_node`` with the
config read from ``POOL/indy_config.py`` instead of /etc/indy; the node's ports come
from ``POOL/pool.json``. It runs until SIGTERM or SIGINT, then stops its looper cleanly.
"""

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="pool directory written by pool.py")
    p.add_argument("--name", required=True, help="node name, e.g. Node1")
    args = p.parse_args(argv)
    pool_dir = os.path.abspath(args.dir)
    with open(os.path.join(pool_dir, "pool.json")) as f:
        pool = json.load(f)
    me = next((n for n in pool["nodes"] if n["name"] == args.name), None)
    if me is None:
        print(f"no node named {args.name} in {pool_dir}", file=sys.stderr)
        return 2

    from plenum.common.config_util import getConfig
    from plenum.server.node import Node
    from stp_core.common.log import Logger
    from stp_core.loop.looper import Looper
    from stp_core.types import HA

    config = getConfig(general_config_dir=pool_dir)
    # Plenum's logger was set up at import time from stp_core's defaults (everything to
    # stdout at TRACE level); apply the pool's config: INFO, to a file only.
    Logger().apply_config(config)
    Logger().enableFileLogging(os.path.join(config.LOG_DIR, args.name + ".log"))

    # The Looper installs its own SIGTERM/SIGINT handlers: they end run(), and leaving
    # the with-block stops the node and closes its ledgers.
    with Looper(debug=config.LOOPER_DEBUG) as looper:
        node = Node(args.name, ha=HA(me["ip"], me["port"]),
                    cliha=HA(me["ip"], me["client_port"]), config=config)
        looper.add(node)
        print("ready", flush=True)
        looper.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
