"""A tiny counter registry for the hot path, rendered in the Prometheus text format.

``inc`` is one dict update, cheap enough to call per frame. A name ``family:value``
(e.g. ``msgs_sent:PrePrepare``) is one member of a labelled family: it renders as
``phalanx_msgs_sent{replica="0",type="PrePrepare"}``.
"""

from __future__ import annotations

import re

PREFIX = "phalanx_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    return PREFIX + _INVALID.sub("_", name)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters (``inc``) and gauges (``set``) of one node, labelled with its id."""

    __slots__ = ("_counters", "_gauges", "replica")

    def __init__(self, replica: int | str = "") -> None:
        self.replica = str(replica)
        self._counters: dict[str, int | float] = {}
        self._gauges: dict[str, int | float] = {}

    def inc(self, name: str, by: int | float = 1) -> None:
        """Add ``by`` to counter ``name`` (created at 0)."""
        counters = self._counters
        counters[name] = counters.get(name, 0) + by

    def set_counter(self, name: str, value: int | float) -> None:
        """Set counter ``name`` to ``value``: for counters kept elsewhere (e.g. the
        per-type accounting) and copied in when ``/metrics`` is scraped."""
        self._counters[name] = value

    def set(self, name: str, value: int | float) -> None:
        """Set gauge ``name`` to ``value``."""
        self._gauges[name] = value

    def get(self, name: str) -> int | float:
        """The current value of a counter or gauge (0 if never touched)."""
        value = self._counters.get(name)
        if value is None:
            value = self._gauges.get(name, 0)
        return value

    def snapshot(self) -> dict[str, int | float]:
        """A copy of every counter and gauge, by name."""
        return {**self._counters, **self._gauges}

    def render_prometheus(self) -> str:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        families: dict[str, tuple[str, list[tuple[str, int | float]]]] = {}
        for kind, values in (("counter", self._counters), ("gauge", self._gauges)):
            for name, value in values.items():
                family, _, label = name.partition(":")
                metric = _metric_name(family)
                entry = families.setdefault(metric, (kind, []))
                entry[1].append((label, value))
        replica = _label_value(self.replica)
        lines: list[str] = []
        for metric in sorted(families):
            kind, samples = families[metric]
            lines.append(f"# TYPE {metric} {kind}")
            for label, value in sorted(samples, key=lambda s: s[0]):
                labels = f'replica="{replica}"'
                if label:
                    labels += f',type="{_label_value(label)}"'
                lines.append(f"{metric}{{{labels}}} {value}")
        return "\n".join(lines) + "\n" if lines else ""
