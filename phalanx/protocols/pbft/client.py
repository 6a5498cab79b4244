"""The PBFT client as a sans-I/O core (implements ``phalanx.core.node.ClientCore``).

One outstanding request at a time. It sends the request to the primary it believes in,
and on a timeout retransmits it to every replica (backups then forward it and start
their view-change timers). A ``multicast`` client sends every request to all replicas
at once: the backups check it (for the ledger: verify its signatures) while the primary
is still batching, instead of only once the pre-prepare arrives, and need not forward it.
A result is accepted once f+1 replicas (so at least one correct) sent the same result
for the request's timestamp; f+1 matching refusals end it with an error.
"""

from __future__ import annotations

from typing import Any

from phalanx.core.crypto import ClientCrypto
from phalanx.core.effects import Broadcast, CancelTimer, Completed, Dropped, Send, SetTimer
from phalanx.core.messages import Error, Reply, Request
from phalanx.core.quorum import Quorums

RETRY_TIMER = "client.retry"


class PbftClient:
    def __init__(
        self,
        crypto: ClientCrypto,
        quorums: Quorums,
        retransmit_timeout: float = 1.0,
        max_retransmit_timeout: float = 8.0,
        first_timestamp: int = 1,
        endpoint: bytes = b"",
        multicast: bool = False,
    ) -> None:
        self.crypto = crypto
        self.client_id = crypto.public_key
        self.endpoint = endpoint  # a shared connection's identity, b"" for our own
        self.multicast = multicast  # send every request to all replicas at once
        self.q = quorums
        self.timeout = retransmit_timeout
        self.max_timeout = max_retransmit_timeout
        self.next_timestamp = first_timestamp
        self.view = 0  # the client's guess, learned from replies
        self.request: Request | None = None
        self.current_timeout = retransmit_timeout
        self.replies: dict[int, bytes] = {}  # replica -> result for the current request
        self.errors: dict[int, str] = {}
        self.views: dict[int, int] = {}  # replica -> view it last reported

    def submit(self, op: bytes) -> tuple[int, list[Any]]:
        if self.request is not None:
            raise RuntimeError("one request at a time: wait for the previous one to complete")
        ts = self.next_timestamp
        self.next_timestamp += 1
        unsigned = Request(self.client_id, ts, op, self.endpoint)
        auth = self.crypto.authenticate(unsigned.digest())
        self.request = Request(self.client_id, ts, op, self.endpoint, auth, self.multicast)
        self.replies.clear()
        self.errors.clear()
        self.current_timeout = self.timeout
        send = Broadcast(self.request) if self.multicast else Send(self.q.primary(self.view),
                                                                    self.request)
        return ts, [send, SetTimer(RETRY_TIMER, self.current_timeout)]

    def on_message(self, src: int, msg: Any) -> list[Any]:
        if not 0 <= src < self.q.n:
            return [Dropped("unknown_sender", src)]
        if isinstance(msg, Reply):
            if msg.view > self.views.get(src, 0):
                self.views[src] = msg.view
                self._learn_view()
            return self._count_answer(src, msg, self.replies, msg.result)
        if isinstance(msg, Error):
            return self._count_answer(src, msg, self.errors, msg.reason)
        return [Dropped("unexpected_message", src)]

    def _count_answer(
        self, src: int, msg: Reply | Error, answers: dict[int, Any], answer: Any
    ) -> list[Any]:
        """Record replica ``src``'s answer to the current request; f+1 equal answers (so
        one from a correct replica) complete it."""
        req = self.request
        if (
            req is None
            or msg.timestamp != req.timestamp
            or msg.replica != src
            or msg.client != self.client_id
        ):
            return []  # late, for another client, or claiming another replica's voice
        answers[src] = answer
        if sum(1 for a in answers.values() if a == answer) < self.q.reply:
            return []
        if isinstance(msg, Error):
            return self._complete(Completed(req.timestamp, b"", error=answer))
        return self._complete(Completed(req.timestamp, answer))

    def on_timer(self, name: str) -> list[Any]:
        if name != RETRY_TIMER or self.request is None:
            return []
        self.current_timeout = min(self.current_timeout * 2, self.max_timeout)
        return [Broadcast(self.request), SetTimer(RETRY_TIMER, self.current_timeout)]

    def abandon(self) -> list[Any]:
        if self.request is None:
            return []
        self.request = None
        return [CancelTimer(RETRY_TIMER)]

    def _complete(self, done: Completed) -> list[Any]:
        self.request = None
        return [CancelTimer(RETRY_TIMER), done]

    def _learn_view(self) -> None:
        """Believe a view once f+1 replicas report it or a later one."""
        views = sorted(self.views.values(), reverse=True)
        if len(views) >= self.q.weak:
            self.view = max(self.view, views[self.q.weak - 1])
