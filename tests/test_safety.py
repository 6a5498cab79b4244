"""The safety definitions, as the simulator's checkers and the bench apply them."""

from __future__ import annotations

import random

from phalanx.safety import logs_agree, states_agree
from phalanx.safety.properties import executed_set_key


def test_agreement_holds_when_every_shared_position_has_one_value():
    logs = {0: {1: b"a", 2: b"b"}, 1: {2: b"b", 3: b"c"}, 2: {3: b"c"}}
    assert logs_agree(logs) == (True, 2)
    logs[2][1] = b"x"
    assert logs_agree(logs) == (False, 3)


def test_equal_executions_must_have_equal_states_and_others_may_differ():
    assert states_agree({0: (5, b"s5"), 1: (5, b"s5"), 2: (4, b"s4")})
    assert not states_agree({0: (5, b"s5"), 1: (5, b"other")})


def test_the_executed_set_key_ignores_order_and_tells_sets_apart():
    requests = [(bytes([i]) * 32, t) for i in range(5) for t in (1, 2)]
    shuffled = random.Random(3).sample(requests, len(requests))
    assert executed_set_key(requests) == executed_set_key(shuffled)
    assert executed_set_key(requests[:-1]) != executed_set_key(requests)
    # Kept incrementally: the key of a set is the sum of its parts' keys.
    assert (executed_set_key(requests[:4]) + executed_set_key(requests[4:])) % (1 << 256) == (
        executed_set_key(requests)
    )
