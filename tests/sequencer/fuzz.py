"""The sequencer under the fuzzer: crashes, restarts, partitions, loss — no Byzantine
replica (it tolerates none), so no strategies. Half the seeds run replicas of several
processes (two witnesses each), which crash and restart with their replica."""

from __future__ import annotations

import functools
import random
from typing import Any

from phalanx.byzantine.adapter import FuzzAdapter
from phalanx.core.effects import Broadcast
from sequencer.messages import Commit
from sequencer.options import SequencerOptions
from sequencer.replica import SequencerReplica
from sequencer.spec import make_replica


def random_options(rng: random.Random) -> SequencerOptions:
    return SequencerOptions(timeout=0.5, max_batch=rng.choice((1, 4, 16)),
                            witnesses=rng.choice((0, 2)), state_digest_every_batch=True)




class _CommitAlone(SequencerReplica):
    """Planted bug: the leader commits on its own say-so (a quorum of one)."""

    def _propose(self) -> list[Any]:
        out = super()._propose()
        if self.leader == self.replica_id and not self.changing and self.log:
            top = max(self.log)
            out += [*self._commit(top), Broadcast(Commit(self.view, top))]
        return out


PLANTED = {"commit_alone": functools.partial(make_replica, replica_class=_CommitAlone)}

ADAPTER = FuzzAdapter(make_options=random_options, strategies={}, planted_bugs=PLANTED,
                      view_change_timeout=0.5)
