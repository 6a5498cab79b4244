"""The live progress display of ``phalanx bench`` (rich), shown on a terminal only.

Once a second it reads one replica's ``requests_executed`` from ``/status`` and shows
the phase (warm-up, measuring), the time left and the current execution rate. The
figures it shows are for the operator's eyes only: the results come from the load
generators and the window's two ``/status`` snapshots, never from this poll (which is
skipped entirely when stdout is not a terminal, so it cannot perturb a scripted run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

POLL_S = 1.0


async def show_progress(
    status: Callable[[], Awaitable[dict[str, Any] | None]],
    start: float,
    window_start: float,
    window_end: float,
    console: Console | None = None,
) -> None:
    """Display until ``window_end`` (wall clock); cancel to stop early."""
    console = console or Console()
    if not console.is_terminal:
        return
    columns = (
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    last: tuple[float, float] | None = None
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("bench", total=window_end - start, phase="starting",
                                 rate="")
        while (now := time.time()) < window_end:
            body = await status()
            executed = body.get("requests_executed") if body else None
            rate = ""
            if isinstance(executed, int | float):
                if last is not None and now > last[0]:
                    rate = f"{(executed - last[1]) / (now - last[0]):,.0f} tx/s executed"
                last = (now, executed)
            phase = "warm-up" if now < window_start else "measuring"
            progress.update(task, completed=max(0.0, now - start), phase=phase, rate=rate)
            await asyncio.sleep(min(POLL_S, max(0.0, window_end - time.time())))
        progress.update(task, completed=window_end - start, phase="done")
