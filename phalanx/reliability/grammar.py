"""Grammar-generated wire messages for the hostile-input harness.

Well-formed messages of every type a protocol's wire decoder accepts come from the
Byzantine fuzzer's :class:`~phalanx.byzantine.generate.MessageGenerator` (built from the
type annotations: edge-case integers, wrong-length byte strings, nested structs, made-up
signatures). :func:`mutate` then damages encoded bytes the way a fuzzer does (bit
flips, truncation, splices, a msgpack type byte replaced, a length inflated). A
:class:`Corpus` keeps a pool of generated messages and hands out copies, mutated half
the time, cheaply enough for a run to send millions.

Seeded: the same seed gives the same messages (the harness prints it).
"""

from __future__ import annotations

import random

import msgspec

from phalanx.byzantine.generate import MessageGenerator, TrafficPool

_encoder = msgspec.msgpack.Encoder()


def message_generator(rng: random.Random, n: int) -> MessageGenerator:
    """An outsider's generator: no traffic observed, no key to sign with."""
    return MessageGenerator(rng, TrafficPool(rng), n=n)


def random_message(generator: MessageGenerator, types: tuple[type, ...]) -> bytes:
    """The encoding of a random instance of one of ``types``."""
    generator.new_step()
    return _encoder.encode(generator.random_message(generator.rng.choice(types)))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` damaged in one of several ways."""
    buf = bytearray(data)
    how = rng.randrange(7)
    if not buf or how == 0:  # random bytes
        return rng.randbytes(rng.randrange(1, 64))
    if how == 1:  # flip a few bits
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif how == 2:  # truncate
        del buf[rng.randrange(len(buf)):]
    elif how == 3:  # splice in random bytes
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = rng.randbytes(rng.randrange(1, 16))
    elif how == 4:  # a msgpack marker replaced (array/map/str/bin/int headers)
        buf[rng.randrange(len(buf))] = rng.choice(
            (0xC0, 0xC1, 0xC4, 0xC5, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0x90, 0x9F, 0xFF))
    elif how == 5:  # a huge length announced for what follows
        at = rng.randrange(len(buf))
        buf[at:at] = rng.choice((b"\xdd\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff",
                                 b"\xdb\xff\xff\xff\xf0"))
    else:  # a duplicated chunk
        start = rng.randrange(len(buf))
        buf[start:start] = buf[start:start + rng.randrange(1, 32)]
    return bytes(buf)


class Corpus:
    """A pool of generated messages of ``types``; :meth:`draw` returns one, mutated with
    probability ``mutation`` (well-formed messages of the wrong kind are a case too)."""

    def __init__(self, types: tuple[type, ...], rng: random.Random, n: int,
                 size: int = 2000, mutation: float = 0.5) -> None:
        self.rng = rng
        self.mutation = mutation
        self.generator = message_generator(rng, n)
        self.pool = [random_message(self.generator, types) for _ in range(size)]

    def draw(self) -> bytes:
        message = self.rng.choice(self.pool)
        return mutate(message, self.rng) if self.rng.random() < self.mutation else message
