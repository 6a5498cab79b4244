"""Inter-region round-trip-time matrices, read from CSV.

Format (both ``shared/data`` matrices use it): the header row's first cell names the
axes (``src_region\\dst_region``, ``Source``, ...) and is otherwise ignored; the other
header cells are destination regions; each further row is a source region followed by the
RTT in milliseconds to each destination. An empty cell means "no value" — on the diagonal
that is the same region, which gets a small default RTT.

Cells are looked up by region *name*, not position, because published matrices are not
always aligned: the Azure one has a row region that is not a column and vice versa. A
missing ``a -> b`` falls back to ``b -> a`` (the two directions differ by a few ms).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

DEFAULT_SAME_REGION_RTT_MS = 0.5
"""RTT between two machines of one region when the matrix leaves the diagonal empty."""


class LatencyMatrix:
    """Directed RTTs (ms) between named regions."""

    def __init__(
        self,
        rtt_ms: dict[tuple[str, str], float],
        same_region_rtt_ms: float = DEFAULT_SAME_REGION_RTT_MS,
    ) -> None:
        if not (same_region_rtt_ms >= 0 and math.isfinite(same_region_rtt_ms)):
            raise ValueError(f"same-region RTT must be finite and >= 0, got {same_region_rtt_ms}")
        for pair, value in rtt_ms.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"RTT {pair[0]} -> {pair[1]} must be finite and >= 0, got {value}")
        self._rtt = dict(rtt_ms)
        self.same_region_rtt_ms = same_region_rtt_ms
        regions: dict[str, None] = {}  # insertion-ordered set: deterministic iteration
        for src, dst in self._rtt:
            regions[src] = None
            regions[dst] = None
        self.regions: tuple[str, ...] = tuple(regions)

    @classmethod
    def from_csv(
        cls,
        source: str | Path | Iterable[str],
        same_region_rtt_ms: float = DEFAULT_SAME_REGION_RTT_MS,
    ) -> LatencyMatrix:
        """Parse a matrix from a path or from the CSV lines themselves.

        Raises ``ValueError`` naming the line and column of any malformed cell.
        """
        if isinstance(source, str | Path):
            with open(source, newline="", encoding="utf-8-sig") as fh:
                return cls._parse(fh, str(source), same_region_rtt_ms)
        return cls._parse(source, "<lines>", same_region_rtt_ms)

    @classmethod
    def from_csv_text(
        cls, text: str, same_region_rtt_ms: float = DEFAULT_SAME_REGION_RTT_MS
    ) -> LatencyMatrix:
        """Parse a matrix from CSV text."""
        return cls._parse(io.StringIO(text), "<text>", same_region_rtt_ms)

    @classmethod
    def _parse(
        cls, lines: Iterable[str], name: str, same_region_rtt_ms: float
    ) -> LatencyMatrix:
        rows = [row for row in csv.reader(lines) if any(cell.strip() for cell in row)]
        if len(rows) < 2:
            raise ValueError(f"{name}: need a header row and at least one region row")
        header = [cell.strip() for cell in rows[0]]
        destinations = header[1:]
        if not destinations or any(not d for d in destinations):
            raise ValueError(f"{name}: header row must name every destination region")
        if len(set(destinations)) != len(destinations):
            raise ValueError(f"{name}: duplicate destination region in header")
        rtt: dict[tuple[str, str], float] = {}
        sources: set[str] = set()
        for line_no, row in enumerate(rows[1:], start=2):
            src = row[0].strip()
            if not src:
                raise ValueError(f"{name}:{line_no}: empty source region")
            if src in sources:
                raise ValueError(f"{name}:{line_no}: duplicate source region {src!r}")
            sources.add(src)
            cells = row[1:]
            if len(cells) != len(destinations):
                raise ValueError(
                    f"{name}:{line_no}: {len(cells)} values for {len(destinations)} destinations"
                )
            for dst, cell in zip(destinations, cells, strict=True):
                text = cell.strip()
                if not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise ValueError(
                        f"{name}:{line_no}: {src} -> {dst}: not a number: {text!r}"
                    ) from None
                if not (value >= 0 and math.isfinite(value)):
                    raise ValueError(f"{name}:{line_no}: {src} -> {dst}: bad RTT {text!r}")
                rtt[(src, dst)] = value
        if len(sources) != len(destinations):
            raise ValueError(
                f"{name}: not square: {len(sources)} source rows, {len(destinations)} columns"
            )
        return cls(rtt, same_region_rtt_ms)

    def rtt_ms(self, src: str, dst: str) -> float:
        """RTT from ``src`` to ``dst`` in ms; raises ``KeyError`` if the matrix has
        neither direction of an inter-region pair."""
        value = self._rtt.get((src, dst))
        if value is not None:
            return value
        if src == dst:
            return self.same_region_rtt_ms
        value = self._rtt.get((dst, src))
        if value is not None:
            return value
        raise KeyError(f"no RTT between regions {src!r} and {dst!r}")

    def missing_pairs(self, regions: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """Pairs of ``regions`` (default: all) with no RTT in either direction."""
        chosen = list(dict.fromkeys(self.regions if regions is None else regions))
        return [
            (src, dst)
            for i, src in enumerate(chosen)
            for dst in chosen[i + 1 :]
            if (src, dst) not in self._rtt and (dst, src) not in self._rtt
        ]

    def one_way_s(self, src: str, dst: str) -> float:
        """One-way delay in seconds: half the RTT."""
        return self.rtt_ms(src, dst) / 2000.0

    def __contains__(self, region: object) -> bool:
        return region in self.regions

    def __repr__(self) -> str:
        return f"LatencyMatrix({len(self.regions)} regions, {len(self._rtt)} pairs)"
