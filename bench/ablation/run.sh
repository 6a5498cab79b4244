#!/usr/bin/env bash
# The ledger ablation of the trace replay (docs/ledger.md, "How much of the gap is the
# ledger's"): the same replay on four builds of the ledger, interleaved, ROUNDS times.
#   full  the ledger as shipped
#   A     no sparse Merkle tree update (state root frozen at genesis)
#   B     no block sealing at all (no state root, tx root, certificate or storage)
#   C     no execution either: replicas verify each transfer's signature and order it
# A, B and C come from ledger.patch, applied to a throwaway clone of HEAD with its own
# venv, and are switched by PHALANX_ABLATE; they exist only here, never in the package.
# Usage: bash bench/ablation/run.sh   (ROUNDS=3, TRACE=the 2017 Ethereum trace)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
trace=${TRACE:-$repo/../shared/data/eth_tx_2017_blocks_3300000_3301499/transactions.csv}
rounds=${ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/p"
git -C "$work/p" apply "$here/ledger.patch"
make -C "$work/p" -s install >/dev/null 2>&1
cd "$work/p"  # replicas run `python -m phalanx.cli`: the working directory's package wins
for round in $(seq "$rounds"); do
  for variant in full A B C; do
    ablate=$variant; [ "$variant" = full ] && ablate=
    rm -rf "$work/run"
    PHALANX_ABLATE=$ablate "$work/p/.venv/bin/phalanx" bench --trace "$trace" \
      --durability process --no-progress --dir "$work/run" \
      --json "$work/$variant-$round.json" >/dev/null
  done
done
"$work/p/.venv/bin/python" - "$work" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = {}
for path in sorted(Path(sys.argv[1]).glob("*-*.json")):
    r = json.loads(path.read_text())
    runs.setdefault(path.stem.split("-")[0], []).append(r)
print("variant  runs  tx/s (median)  % of floor (each run)         replica CPU us/tx  verify us")
for variant in ("full", "A", "B", "C"):
    rs = runs[variant]
    shares = [r["verify"]["percent_of_floor"] for r in rs]
    print(f"{variant:7s}  {len(rs):4d}  {statistics.median(r['throughput_tps'] for r in rs):13,.0f}"
          f"  {' / '.join(f'{s:.1f}' for s in shares):28s}"
          f"  {statistics.median(r['cpu_us_per_tx'] for r in rs):17.0f}"
          f"  {statistics.median(r['verify']['us_per_verify'] for r in rs):9.1f}")
PY
