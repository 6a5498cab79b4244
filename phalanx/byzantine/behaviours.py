"""Byzantine behaviours for the simulator, protocol-agnostic.

- :class:`Borgesian`: the Borgesian simulator of "Bigger, not Badder" §3 — at every step
  it sends a random number of messages of every type the protocol has, to every channel
  (replicas and clients), with fields drawn at random or mutated from the traffic it
  observed, signed only with Byzantine keys, and forwards stored messages unchanged. Its
  own (honest) core keeps running; its outputs are passed, dropped, mutated or doubled
  per destination, which makes it equivocate as a matter of course.
- :class:`SelectiveDelivery`: an honest core whose messages reach only some peers.

Every random choice of a behaviour comes from a ``random.Random`` derived from the
simulation seed and the replica id, and each *action* (a burst of messages, one rewrite
of an outgoing message) draws from its own sub-stream named by its index. So a seed
replays exactly, and the shrinker can switch single actions off (``disabled``) while the
other actions keep their randomness.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

from phalanx.byzantine.generate import Fixup, MessageGenerator, TrafficPool
from phalanx.sim.behaviour import Behaviour
from phalanx.sim.simulator import NodeId, Simulation

Log = list[tuple[int, float, str]]
"""(action index, simulated time, description) of what a behaviour did (when asked)."""


def derive_rng(seed: int, replica: int, salt: str) -> random.Random:
    """A per-behaviour RNG: a pure function of the simulation seed, replica and purpose."""
    return random.Random(f"phalanx/byzantine/{salt}/{seed}/{replica}")


def describe(msg: Any, limit: int = 160) -> str:
    """A short, deterministic rendering of a message for traces."""
    text = repr(msg)
    return text if len(text) <= limit else text[: limit - 3] + "..."


Switches = Container[int]
"""The numbers of a behaviour's actions that are switched off."""


@dataclass(frozen=True)
class AllBut:
    """Every action switched off except those numbered in ``kept`` — also the ones a
    run reaches beyond the numbers it was shrunk over (a shorter or longer run)."""

    kept: frozenset[int]

    def __contains__(self, action: object) -> bool:
        return action not in self.kept


class ActionBehaviour(Behaviour):
    """Base of behaviours whose deviations are numbered actions (for shrinking)."""

    name = "byzantine"

    def __init__(
        self, replica: int, seed: int, *, disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        self.replica = replica
        self.seed = seed
        self.disabled = disabled
        self.log = log
        self.actions = 0
        self.sim: Simulation | None = None
        self._base = derive_rng(seed, replica, self.name).getrandbits(64)

    def attach(self, sim: Simulation) -> None:
        """Called once the simulation has its clients, before it runs."""
        self.sim = sim

    def _action(self) -> random.Random | None:
        """The RNG of the next action, or None if the shrinker switched it off."""
        index = self.actions
        self.actions += 1
        if index in self.disabled:
            return None
        return random.Random(self._base * 1_000_003 + index)

    def _sent(self, msg: Any) -> None:
        """Hook: a message this behaviour injected (the Borgesian one remembers it)."""

    def _note(self, what: str) -> None:
        if self.log is not None and self.sim is not None:
            self.log.append((self.actions - 1, self.sim.now, f"byz {self.replica}: {what}"))

    def _send(self, dest: NodeId, msg: Any) -> None:
        assert self.sim is not None
        self.sim.inject(self.replica, dest, msg)
        self._sent(msg)
        if self.log is not None:
            self._note(f"-> {_dest(dest)} {describe(msg)}")


class Borgesian(ActionBehaviour):
    """The Borgesian simulator on top of the replica's own core.

    ``messages`` are the protocol's message types; ``signers`` the Byzantine replicas
    whose keys it may sign with; ``fixups`` optional protocol hints (see
    :mod:`phalanx.byzantine.generate`). ``tick`` is the simulated interval between
    unprompted bursts, which stop at ``until``.
    """

    name = "borgesian"

    def __init__(
        self,
        replica: int,
        seed: int,
        messages: Sequence[type],
        *,
        signer_field: str = "replica",
        fixups: dict[type, Fixup] | None = None,
        tick: float = 0.05,
        burst_on_deliver: float = 0.1,
        until: float = math.inf,
        disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        super().__init__(replica, seed, disabled=disabled, log=log)
        self.messages = list(messages)
        self._message_set = frozenset(messages)
        self.signer_field = signer_field
        self.fixups = fixups
        self.tick = tick
        self.burst_on_deliver = burst_on_deliver
        self.until = until
        self.pool = TrafficPool(derive_rng(seed, replica, "pool"))
        self._gen: MessageGenerator | None = None
        self._channels: list[NodeId] = []
        self._replicas: list[int] = []
        self._deliver_rng = derive_rng(seed, replica, "deliver")

    def attach(self, sim: Simulation) -> None:
        super().attach(sim)
        crypto = sim.byzantine_crypto(self.replica)
        self._replicas = [r for r in range(sim.n) if r != self.replica]
        self._channels = [*self._replicas, *sim.client_ids]
        self._gen = MessageGenerator(
            random.Random(0),  # replaced per action
            self.pool,
            n=sim.n,
            signers=sorted(crypto.colluders),
            sign=crypto.sign_as,
            signer_field=self.signer_field,
            fixups=self.fixups,
        )
        first = sim.now + self._deliver_rng.uniform(0, self.tick)
        if first < self.until:
            sim.call_at(first, self._on_tick)

    # -- hooks ------------------------------------------------------------------------

    def _sent(self, msg: Any) -> None:
        # What it forged before is material for later steps: forged values recur.
        self.pool.observe(msg)

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        self.pool.observe(msg)
        if sim.now < self.until and self._deliver_rng.random() < self.burst_on_deliver:
            self._burst()
        return None

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        self.pool.observe(msg)
        rng = self._action()
        if rng is None or self._gen is None:
            return [msg]
        roll = rng.random()
        if roll < 0.6:
            return [msg]
        if roll < 0.7:
            self._note(f"drops its {type(msg).__name__} to {_dest(dest)}")
            return []
        self._gen.rng = rng
        self._gen.new_step()
        mutant = self._gen.mutate(msg)
        self._note(f"-> {_dest(dest)} mutated {describe(mutant)}")
        return [mutant] if roll < 0.9 else [msg, mutant]

    # -- bursts -----------------------------------------------------------------------

    def _on_tick(self, sim: Simulation) -> None:
        self._burst()
        at = sim.now + self.tick
        if at < self.until:
            sim.call_at(at, self._on_tick)

    def _burst(self) -> None:
        """One step of the Borgesian simulator: a random number of messages of every
        type to random channels, and a random number of stored messages forwarded."""
        rng = self._action()
        gen = self._gen
        if rng is None or gen is None:
            return
        gen.rng = rng
        gen.new_step()
        pool = self.pool
        # A quorum-sized volley of one type (forged votes only count in numbers), and a
        # few of every type.
        focus = rng.choice(self.messages)
        for cls in self.messages:
            count = rng.choice((0, 0, 0, 0, 0, 1, 1, 2))
            if cls is focus:
                count += rng.randint(1, len(self._replicas) + 1)
            for _ in range(count):
                seen: list[Any] = pool.messages(cls)
                if seen and rng.random() < 0.4:
                    msg = gen.mutate(rng.choice(seen))
                else:
                    msg = gen.random_message(cls)
                self._send(self._channel(rng), msg)
        if rng.random() < 0.5:
            # The same claim in the name of several replicas, to one victim.
            seen = pool.messages(focus)
            if seen and rng.random() < 0.5:
                msg = gen.mutate(rng.choice(seen))
            else:
                msg = gen.random_message(focus)
            dest = self._channel(rng)
            for copy in gen.quorum_of(msg, rng.randint(2, len(self._replicas) + 1)):
                self._send(dest, copy)
        kinds = [cls for cls in pool.by_type if cls in self._message_set]
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3)) if kinds else 0):
            msg = rng.choice(pool.messages(rng.choice(kinds)))
            self._send(self._channel(rng), msg)

    def _channel(self, rng: random.Random) -> NodeId:
        # Mostly replicas (where the protocol lives), but clients are channels too.
        if rng.random() < 0.85 or len(self._channels) == len(self._replicas):
            return rng.choice(self._replicas)
        return rng.choice(self._channels)


class SelectiveDelivery(ActionBehaviour):
    """An honest core whose every message reaches only a random subset of its
    destinations (chosen per message): peers end up knowing different things."""

    name = "selective"

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        rng = self._action()
        if rng is None or rng.random() < 0.5:
            return [msg]
        self._note(f"withholds {type(msg).__name__} from {_dest(dest)}")
        return []


class Rewriter(ActionBehaviour):
    """An honest core whose outgoing messages of the ``targets`` types
    ``rewrite(rng, dest, msg)`` replaces (protocol-aware strategies such as an
    equivocating primary build on it; returning None keeps the message)."""

    def __init__(
        self,
        replica: int,
        seed: int,
        rewrite: Callable[[random.Random, NodeId, Any], list[Any] | None],
        targets: tuple[type, ...],
        *,
        name: str,
        disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        self.name = name
        super().__init__(replica, seed, disabled=disabled, log=log)
        self._rewrite = rewrite
        self._targets = targets

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        if not isinstance(msg, self._targets):
            return [msg]
        rng = self._action()
        out = None if rng is None else self._rewrite(rng, dest, msg)
        if out is None:
            return [msg]
        self._note(f"-> {_dest(dest)} {[describe(m) for m in out]} instead of {describe(msg)}")
        return out


class Voter(ActionBehaviour):
    """An honest core plus ``votes(msg) -> [(dest, vote), ...]`` injected for every
    message it receives (e.g. PBFT's vote-for-everything)."""

    def __init__(
        self,
        replica: int,
        seed: int,
        votes: Callable[[Simulation, int, Any], list[tuple[NodeId, Any]]],
        *,
        name: str,
        disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        self.name = name
        super().__init__(replica, seed, disabled=disabled, log=log)
        self._votes = votes

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        out = self._votes(sim, self.replica, msg)
        if out and self._action() is not None:
            for dest, vote in out:
                self._send(dest, vote)
        return None


def _dest(dest: NodeId) -> str:
    return f"client {dest.hex()[:8]}" if isinstance(dest, bytes) else f"replica {dest}"
