"""Random protocol messages, built by msgspec struct introspection (Borgesian §3.4).

:class:`MessageGenerator` makes a random instance of any msgspec Struct — nested structs,
lists, tuples and unions included — from :func:`msgspec.inspect.type_info`, so a new
protocol plugs in by listing its message types. Field values are drawn at random or
taken from :class:`TrafficPool`, the real traffic a Byzantine node observed, and mutated
(a view one ahead or behind, a seq beyond the window, a flipped digest byte, the payload
of one message under the digest of another). Values drawn in one *step* are correlated
on purpose (:meth:`MessageGenerator.new_step`): a quorum of forged votes only matters if
the votes agree on view, seq and digest.

Signatures stay unforgeable: a struct with a ``sig`` field and ``signed_bytes()`` is
signed with the key of a Byzantine replica (its signer field set to that replica), or
left with a made-up signature that every correct replica must reject. Signed structs
received from others are only ever forwarded unchanged.

All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

INT_BOUNDARIES = (-1, -(1 << 63), (1 << 31), (1 << 63) - 1, (1 << 64) - 1)
"""Edge values every int decoder must survive (all still encodable as msgpack)."""
INT_DELTAS = (0, 0, 0, 1, -1, 1, 2, -2, 3, 16, -16, 1000)
MAX_LIST = 6
MAX_DEPTH = 4

Sign = Callable[[int, bytes], bytes]
"""``sign(signer, data)``: a signature of Byzantine replica ``signer`` (colluders only)."""
Fixup = Callable[[Any, "MessageGenerator"], Any]
"""Protocol hint run on a freshly generated message (e.g. make a digest match its
payload, so the message gets past the first check and reaches deeper code)."""
M = TypeVar("M")


class TrafficPool:
    """Bounded memory of observed traffic: messages by type, field values by name.

    Reservoirs are replaced at random positions once full, with the caller's RNG, so a
    pool's content is a deterministic function of the seed and the traffic.
    """

    def __init__(self, rng: random.Random, per_key: int = 48) -> None:
        self._rng = rng
        self._per_key = per_key
        self.by_type: dict[type, list[Any]] = {}
        self.values: dict[str, list[Any]] = {}
        self.observed = 0

    def observe(self, msg: Any) -> None:
        """Remember ``msg`` (and every struct nested in it) and its field values."""
        self.observed += 1
        self._walk(msg, 0)

    def messages(self, cls: type[M]) -> list[M]:
        """The observed messages of type ``cls`` (exactly: kept by their own type)."""
        return self.by_type.get(cls, [])

    def _walk(self, value: Any, depth: int) -> None:
        if isinstance(value, msgspec.Struct):
            self._keep(self.by_type.setdefault(type(value), []), value)
            if depth >= MAX_DEPTH:
                return
            for name in value.__struct_fields__:
                field = getattr(value, name)
                if isinstance(field, int | bytes | str) and not isinstance(field, bool):
                    self._keep(self.values.setdefault(name, []), field)
                elif isinstance(field, msgspec.Struct):
                    self._walk(field, depth + 1)
                elif isinstance(field, list | tuple):
                    for item in field[:MAX_LIST]:
                        if isinstance(item, msgspec.Struct | list | tuple):
                            self._walk(item, depth + 1)
        elif isinstance(value, list | tuple) and depth < MAX_DEPTH:
            for item in value[:MAX_LIST]:
                self._walk(item, depth + 1)

    def _keep(self, bucket: list[Any], item: Any) -> None:
        if len(bucket) < self._per_key:
            bucket.append(item)
        else:
            bucket[self._rng.randrange(self._per_key)] = item


def is_signed(cls: type) -> bool:
    """A struct whose ``sig`` field covers ``signed_bytes()``."""
    return "sig" in getattr(cls, "__struct_fields__", ()) and hasattr(cls, "signed_bytes")


class MessageGenerator:
    """Random and mutated instances of msgspec Structs.

    ``signers`` are the Byzantine replicas whose keys ``sign`` may use; ``signer_field``
    names the field that says who signed a struct (PBFT: ``replica``). ``fixups`` are
    per-type protocol hints applied to a share of generated messages.
    """

    def __init__(
        self,
        rng: random.Random,
        pool: TrafficPool,
        *,
        n: int,
        signers: Sequence[int] = (),
        sign: Sign | None = None,
        signer_field: str = "replica",
        fixups: dict[type, Fixup] | None = None,
    ) -> None:
        self.rng = rng
        self.pool = pool
        self.n = n
        self.signers = list(signers)
        self._sign = sign
        self.signer_field = signer_field
        self.fixups = fixups or {}
        self._info: dict[type, mi.StructType] = {}
        # Keyed by (kind, field name): a name may hold ints in one place, bytes in another.
        self._sticky: dict[tuple[str, str], Any] = {}
        self._sticky_names: dict[tuple[str, str], bool] = {}
        self._message_ints: list[int] = []  # ints drawn for the message being built

    # -- steps ------------------------------------------------------------------------

    def new_step(self) -> None:
        """Start a new burst: each field name is, with probability 1/2, *sticky* — all
        messages of the step share one value for it (e.g. one seq and one digest across
        several forged checkpoints, each naming a different replica)."""
        self._sticky.clear()
        self._sticky_names.clear()

    # -- whole messages ---------------------------------------------------------------

    def random_message(self, cls: type) -> Any:
        """A new instance of struct ``cls`` with random or traffic-derived fields. Ints
        inside one message repeat each other often (a NEW-VIEW's view and its
        VIEW-CHANGEs' new view; one instance id throughout)."""
        self._message_ints = []
        msg = self._struct(cls, 0, fresh=True)
        fixup = self.fixups.get(cls)
        if fixup is not None and self.rng.random() < 0.7:
            msg = fixup(msg, self)
        return self.maybe_sign(msg)

    def mutate(self, msg: Any) -> Any:
        """``msg`` with one to three fields replaced by generated values. A signed struct
        is then signed again by a Byzantine replica, or keeps its (now invalid) signature."""
        info = self._struct_info(type(msg))
        fields = [f for f in info.fields if f.name != "sig"]
        if not fields:
            return msg
        changes = {}
        for field in self.rng.sample(fields, min(len(fields), self.rng.choice((1, 1, 2, 3)))):
            changes[field.name] = self.value(field.type, field.name, 1)
        try:
            out = msgspec.structs.replace(msg, **changes)
        except (TypeError, ValueError):
            return msg
        if is_signed(type(out)) and self.rng.random() < 0.7:
            out = self._signed(out)
        return out

    def maybe_sign(self, msg: Any) -> Any:
        """Sign a signable struct as a Byzantine replica most of the time; otherwise leave
        the made-up signature (a forgery attempt every correct replica must reject)."""
        if is_signed(type(msg)) and self.rng.random() < 0.85:
            return self._signed(msg)
        return msg

    def quorum_of(self, msg: Any, count: int) -> list[Any]:
        """Copies of ``msg`` each claiming a different signer (a forged quorum): signed
        for real where the signer is Byzantine, with a made-up signature otherwise."""
        if self.signer_field not in msg.__struct_fields__:
            return [msg] * count
        signers = self.rng.sample(range(self.n), min(count, self.n))
        out = []
        for signer in signers:
            copy = msgspec.structs.replace(msg, **{self.signer_field: signer})
            if is_signed(type(copy)):
                if signer in self.signers and self._sign is not None:
                    sig = self._sign(signer, copy.signed_bytes())
                else:
                    sig = self.rng.randbytes(len(msg.sig) or 16)
                copy = msgspec.structs.replace(copy, sig=sig)
            out.append(copy)
        return out

    def _signed(self, msg: Any) -> Any:
        if self._sign is None or not self.signers:
            return msg
        signer = self.rng.choice(self.signers)
        if self.signer_field in msg.__struct_fields__:
            msg = msgspec.structs.replace(msg, **{self.signer_field: signer})
        return msgspec.structs.replace(msg, sig=self._sign(signer, msg.signed_bytes()))

    # -- values by type ---------------------------------------------------------------

    def value(self, t: mi.Type, name: str, depth: int) -> Any:
        """A random value of msgspec type ``t`` for a field called ``name``."""
        rng = self.rng
        if isinstance(t, mi.IntType):
            return self._int(name)
        if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
            return self._bytes(name)
        if isinstance(t, mi.StrType):
            seen = [v for v in self.pool.values.get(name, ()) if isinstance(v, str)]
            if seen and rng.random() < 0.6:
                return rng.choice(seen)
            return rng.choice(("", "x", "bad_digest", "\u00e9" * rng.randint(1, 8)))
        if isinstance(t, mi.BoolType):
            return rng.random() < 0.5
        if isinstance(t, mi.FloatType):
            return rng.choice((0.0, -1.0, 1e300, rng.random()))
        if isinstance(t, mi.NoneType):
            return None
        if isinstance(t, mi.LiteralType):
            return rng.choice(t.values)
        if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            length = self._length(depth)
            item_type = t.item_type
            if isinstance(item_type, mi.StructType) and length > 1 and rng.random() < 0.4:
                # A list of votes or proofs: often one claim made by several signers.
                items = self.quorum_of(self._struct(item_type.cls, depth + 1, False), length)
            else:
                items = [self.value(item_type, name, depth + 1) for _ in range(length)]
            if isinstance(t, mi.VarTupleType):
                return tuple(items)
            if isinstance(t, mi.SetType | mi.FrozenSetType):
                try:
                    return set(items) if isinstance(t, mi.SetType) else frozenset(items)
                except TypeError:  # unhashable items: an empty set is still a set
                    return set() if isinstance(t, mi.SetType) else frozenset()
            return items
        if isinstance(t, mi.TupleType):
            return tuple(self.value(item, name, depth + 1) for item in t.item_types)
        if isinstance(t, mi.DictType):
            return {
                self.value(t.key_type, name, depth + 1): self.value(t.value_type, name, depth + 1)
                for _ in range(self._length(depth))
            }
        if isinstance(t, mi.StructType):
            return self._struct(t.cls, depth, fresh=False)
        if isinstance(t, mi.UnionType):
            return self.value(rng.choice(t.types), name, depth)
        if isinstance(t, mi.AnyType):
            return rng.choice((self._int(name), self._bytes(name)))
        raise NotImplementedError(f"no random values for msgspec type {t!r} (field {name!r})")

    def _length(self, depth: int) -> int:
        if depth >= MAX_DEPTH:
            return 0
        return self.rng.choice((0, 1, 1, 2, 3, 3, 4, MAX_LIST))

    def _struct(self, cls: type, depth: int, fresh: bool) -> Any:
        rng = self.rng
        if not fresh:
            seen: list[Any] = self.pool.messages(cls)
            # Nested structs: forward a real one (its signature stays valid) or a mutant.
            if seen and rng.random() < 0.6:
                msg = rng.choice(seen)
                return self.mutate(msg) if rng.random() < 0.2 else msg
        info = self._struct_info(cls)
        kwargs = {f.name: self.value(f.type, f.name, depth + 1) for f in info.fields}
        msg = cls(**kwargs)
        if fresh or not is_signed(cls) or rng.random() < 0.5:
            return msg
        return self._signed(msg)

    def _struct_info(self, cls: type) -> mi.StructType:
        info = self._info.get(cls)
        if info is None:
            found = mi.type_info(cls)
            if not isinstance(found, mi.StructType):
                raise TypeError(f"{cls!r} is not a msgspec Struct")
            info = self._info[cls] = found
        return info

    def _is_sticky(self, key: tuple[str, str]) -> bool:
        sticky = self._sticky_names.get(key)
        if sticky is None:
            sticky = self._sticky_names[key] = self.rng.random() < 0.5
        return sticky

    def _int(self, name: str) -> int:
        key = ("int", name)
        if self._is_sticky(key):
            value = self._sticky.get(key)
            if value is None:
                value = self._sticky[key] = self._fresh_int(name)
            return value
        return self._fresh_int(name)

    def _fresh_int(self, name: str) -> int:
        rng = self.rng
        if self._message_ints and rng.random() < 0.4:
            return rng.choice(self._message_ints)
        value = self._new_int(name)
        self._message_ints.append(value)
        return value

    def _new_int(self, name: str) -> int:
        rng = self.rng
        roll = rng.random()
        seen = self.pool.values.get(name)
        if seen and roll < 0.65:
            base = rng.choice(seen)
            if isinstance(base, int):
                # Stale and future views, the next and far-away slots, other replicas.
                return _clamp(base + rng.choice(INT_DELTAS))
        if roll < 0.85:
            return rng.randint(0, self.n + 4)
        if roll < 0.93:
            return rng.randint(0, 1 << 16)
        return rng.choice(INT_BOUNDARIES)

    def _bytes(self, name: str) -> bytes:
        key = ("bytes", name)
        if self._is_sticky(key):
            value = self._sticky.get(key)
            if value is None:
                value = self._sticky[key] = self._fresh_bytes(name)
            return value
        return self._fresh_bytes(name)

    def _fresh_bytes(self, name: str) -> bytes:
        rng = self.rng
        roll = rng.random()
        values = self.pool.values
        seen = [v for v in values.get(name, ()) if isinstance(v, bytes)]
        if seen and roll < 0.45:
            return rng.choice(seen)
        if seen and roll < 0.6:
            return _mutate_bytes(rng.choice(seen), rng)
        if roll < 0.75 and values:
            # Any observed bytes, or the digest of any: swapped payloads, wrong digests.
            other = values[rng.choice(sorted(values))]
            picked = rng.choice(other)
            if isinstance(picked, bytes):
                return sha256(picked).digest() if rng.random() < 0.5 else picked
        if roll < 0.9:
            return rng.randbytes(rng.choice((16, 32)))
        return rng.choice((b"", b"\x00", rng.randbytes(rng.randint(1, 300))))


def _clamp(value: int) -> int:
    return max(-(1 << 63), min(value, (1 << 64) - 1))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return rng.randbytes(32)
    choice = rng.randrange(4)
    if choice == 0:  # one flipped bit
        i = rng.randrange(len(data))
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if choice == 1:
        return data[: rng.randrange(len(data))]
    if choice == 2:
        return data + rng.randbytes(rng.randint(1, 8))
    return bytes(reversed(data))
