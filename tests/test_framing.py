"""Frames: reassembly from arbitrary chunks, size limits, MACs with per-direction counters."""

from __future__ import annotations

import random

import pytest

from phalanx.runtime.framing import (
    FRAME_OVERHEAD,
    TO_ACCEPTOR,
    TO_CONNECTOR,
    BadBundle,
    FrameAuthError,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    split_bundle,
)

KEY = b"s" * 32


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(bytes(frame))
    return frames


def stream(payloads: list[bytes], key: bytes | None = KEY) -> bytes:
    encoder = FrameEncoder(key, TO_ACCEPTOR)
    return b"".join(encoder.encode(p) for p in payloads)


PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)) * 40, b"z" * 70_000]


def test_frame_layout_is_length_payload_tag() -> None:
    frame = FrameEncoder(KEY, TO_ACCEPTOR).encode(b"abc")
    assert len(frame) == FRAME_OVERHEAD + 3
    assert frame[:4] == (3).to_bytes(4, "big") and frame[4:7] == b"abc"


def test_merged_chunks_yield_every_frame_in_order() -> None:
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(stream(PAYLOADS))
    assert drain(decoder) == PAYLOADS
    assert decoder.buffered == 0


@pytest.mark.parametrize("seed", range(5))
def test_arbitrary_split_points_yield_the_same_frames(seed: int) -> None:
    data = stream(PAYLOADS)
    rng = random.Random(seed)
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    got: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 100, 5000, 65536])
        decoder.feed(data[pos : pos + step])
        got += drain(decoder)
        pos += step
    assert got == PAYLOADS
    decoder.eof()  # nothing pending: no error


def test_byte_at_a_time_then_bulk() -> None:
    data = stream([b"first", b"second"])
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    for i in range(len(data) - 1):
        decoder.feed(data[i : i + 1])
        assert drain(decoder) in ([], [b"first"])
    decoder.feed(data[-1:])
    assert drain(decoder) == [b"second"]


def test_returned_views_stay_valid_while_more_data_arrives() -> None:
    # The decoder must never resize a buffer it handed slices of.
    data = stream([b"x" * 10, b"y" * 10, b"z" * 10])
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(data[:10])
    assert decoder.next_frame() is None
    decoder.feed(data[10:35])  # now buffered in the decoder's own growable buffer
    first = decoder.next_frame()
    decoder.feed(data[35:50])  # would raise BufferError if it grew that buffer in place
    decoder.feed(data[50:])
    rest = drain(decoder)
    assert first is not None and bytes(first) == b"x" * 10
    assert rest == [b"y" * 10, b"z" * 10]


def test_oversize_length_is_rejected_before_buffering() -> None:
    decoder = FrameDecoder(KEY, TO_ACCEPTOR, max_frame=1024)
    decoder.feed((1025).to_bytes(4, "big") + b"only a little")
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.reason == "frame_too_large"
    with pytest.raises(FrameError):  # a broken decoder stays broken
        decoder.next_frame()


def test_max_size_frame_is_accepted() -> None:
    decoder = FrameDecoder(KEY, TO_ACCEPTOR, max_frame=1024)
    decoder.feed(stream([b"m" * 1024]))
    assert drain(decoder) == [b"m" * 1024]


def test_truncated_frame_then_eof_is_reported() -> None:
    data = stream([b"complete", b"cut short"])
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(data[:-3])
    assert drain(decoder) == [b"complete"]
    with pytest.raises(FrameTruncated) as info:
        decoder.eof()
    assert info.value.reason == "truncated_frame"


@pytest.mark.parametrize("position", [4, 9, -1])  # payload, payload end, tag
def test_bit_flip_fails_the_mac(position: int) -> None:
    data = bytearray(stream([b"pay me 100 coins"]))
    data[position] ^= 0x01
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(bytes(data))
    with pytest.raises(FrameAuthError) as info:
        decoder.next_frame()
    assert info.value.reason == "bad_mac"


def test_replayed_frame_fails_the_counter() -> None:
    encoder = FrameEncoder(KEY, TO_ACCEPTOR)
    first = encoder.encode(b"commit seq=5")
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(first)
    assert drain(decoder) == [b"commit seq=5"]
    decoder.feed(first)  # the same bytes again
    with pytest.raises(FrameAuthError):
        decoder.next_frame()


def test_reordered_frames_fail() -> None:
    encoder = FrameEncoder(KEY, TO_ACCEPTOR)
    a, b = encoder.encode(b"a"), encoder.encode(b"b")
    decoder = FrameDecoder(KEY, TO_ACCEPTOR)
    decoder.feed(b + a)
    with pytest.raises(FrameAuthError):
        decoder.next_frame()


def test_frame_reflected_to_its_sender_fails_the_direction() -> None:
    frame = FrameEncoder(KEY, TO_ACCEPTOR).encode(b"hi")
    decoder = FrameDecoder(KEY, TO_CONNECTOR)
    decoder.feed(frame)
    with pytest.raises(FrameAuthError):
        decoder.next_frame()


def test_wrong_key_fails() -> None:
    decoder = FrameDecoder(b"t" * 32, TO_ACCEPTOR)
    decoder.feed(stream([b"hi"]))
    with pytest.raises(FrameAuthError):
        decoder.next_frame()


def test_key_switch_mid_buffer_applies_to_following_frames() -> None:
    # The handshake's last untagged frame and the first tagged frame can arrive together.
    plain = FrameEncoder().encode(b"confirm")
    tagged = FrameEncoder(KEY, TO_ACCEPTOR).encode(b"data")
    decoder = FrameDecoder()
    decoder.feed(plain + tagged)
    assert bytes(decoder.next_frame()) == b"confirm"
    decoder.set_key(KEY, TO_ACCEPTOR)
    assert drain(decoder) == [b"data"]


# -- bundles ------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[0], [5], [0, 0, 3], [1, 1000, 17, 70_000]])
def test_a_bundle_round_trips_its_messages_in_order(sizes: list[int]) -> None:
    rng = random.Random(len(sizes))
    messages = [rng.randbytes(size) for size in sizes]
    enc, dec = FrameEncoder(KEY, TO_ACCEPTOR), FrameDecoder(KEY, TO_ACCEPTOR)
    dec.feed(enc.encode_bundle(messages))
    frame = dec.next_frame()
    assert frame is not None
    assert [bytes(m) for m in split_bundle(frame)] == messages


def test_a_bundle_is_tagged_like_one_frame_of_its_bytes() -> None:
    # encode_bundle_into MACs the parts without joining them: same tag as the joined bytes.
    messages = [b"alpha", b"", b"gamma" * 100]
    joined = b"".join(len(m).to_bytes(4, "big") + m for m in messages)
    assert FrameEncoder(KEY, TO_ACCEPTOR).encode_bundle(messages) == FrameEncoder(
        KEY, TO_ACCEPTOR
    ).encode(joined)


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x00", b"\x00\x00\x00\x05abc", b"\x00\x00\x00\x01a\x00", b"\xff\xff\xff\xffx"],
)
def test_a_malformed_bundle_is_rejected(payload: bytes) -> None:
    with pytest.raises(BadBundle):
        split_bundle(memoryview(payload))


def test_the_decoder_reports_the_frame_it_is_receiving_and_how_many_it_returned() -> None:
    # What the client-link deadlines sample (runtime/client_links.py).
    encoder, decoder = FrameEncoder(KEY, TO_ACCEPTOR), FrameDecoder(KEY, TO_ACCEPTOR)
    first, second = encoder.encode(b"a" * 100), encoder.encode(b"b" * 5000)
    assert (decoder.frames_decoded, decoder.pending_frame_size) == (0, None)
    decoder.feed(first + second[:3])
    assert drain(decoder) == [b"a" * 100]
    assert (decoder.frames_decoded, decoder.pending_frame_size) == (1, None)  # no length yet
    decoder.feed(second[3:10])
    assert decoder.pending_frame_size == len(second) == 5000 + FRAME_OVERHEAD
    decoder.feed(second[10:])
    assert drain(decoder) == [b"b" * 5000]
    assert (decoder.frames_decoded, decoder.buffered, decoder.pending_frame_size) == (2, 0, None)
