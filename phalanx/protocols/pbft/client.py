"""The PBFT client as a sans-I/O core (implements ``phalanx.core.node.ClientCore``).

One outstanding request at a time. It sends the request to the primary it believes in,
and on a timeout retransmits it to every replica (backups then forward it and start
their view-change timers). A ``multicast`` client sends every request to all replicas
at once: the backups check it (for the ledger: verify its signatures) while the primary
is still batching, instead of only once the pre-prepare arrives, and need not forward it.
A result is accepted once f+1 replicas (so at least one correct) sent the same result
for the request's timestamp.

A refusal ends a request only when it proves the request can never execute (see
:class:`~phalanx.core.messages.Refusal` and docs/pbft.md, "Refusals"): f+1 replicas
refusing for the same FINAL reason (one of them is correct, and every correct replica
refuses those bytes), or a blocking set (``Quorums.blocking``, 2f+1 at n = 3f+1) refusing
for the same permanent reason (LOCAL or FINAL: then every strong quorum holds a correct
replica that will never vote for it). Anything else
— a refusal judged on one replica's state or load, which f Byzantine replicas can echo —
is only reported as :class:`~phalanx.core.effects.NotAccepted` once f+1 replicas refused;
the request stays outstanding, so a result that arrives later is still accepted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from phalanx.core.crypto import ClientCrypto
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    Completed,
    Dropped,
    NotAccepted,
    Send,
    SetTimer,
)
from phalanx.core.messages import Error, Refusal, Reply, Request
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
        self.errors: dict[int, tuple[str, int]] = {}  # replica -> (reason, Refusal value)
        self.not_accepted = False  # NotAccepted already reported for the current request
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
        self.not_accepted = False
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
            if not self._answers_request(src, msg):
                return []
            self.replies[src] = msg.result
            if sum(1 for r in self.replies.values() if r == msg.result) < self.q.reply:
                return []
            return self._complete(Completed(msg.timestamp, msg.result))
        if isinstance(msg, Error):
            if not self._answers_request(src, msg):
                return []
            self.errors[src] = (msg.reason, msg.refusal)
            return self._judge_refusals(msg.timestamp)
        return [Dropped("unexpected_message", src)]

    def _answers_request(self, src: int, msg: Reply | Error) -> bool:
        """Is ``msg`` replica ``src``'s own answer to the current request?"""
        req = self.request
        return (
            req is not None
            and msg.timestamp == req.timestamp
            and msg.replica == src
            and msg.client == self.client_id
        )

    def _judge_refusals(self, timestamp: int) -> list[Any]:
        """End the current request as refused if the refusals prove it can never execute;
        otherwise report NotAccepted (once) when f+1 replicas refused it."""
        final: Counter[str] = Counter()
        permanent: Counter[str] = Counter()
        for reason, refusal in self.errors.values():
            if refusal == Refusal.FINAL:
                final[reason] += 1
            if refusal in (Refusal.LOCAL, Refusal.FINAL):
                permanent[reason] += 1
        for reason, count in final.items():
            if count >= self.q.weak:  # one is correct: every correct replica refuses it
                return self._complete(Completed(timestamp, b"", error=reason))
        for reason, count in permanent.items():
            if count >= self.q.blocking:  # every strong quorum holds a correct refuser
                return self._complete(Completed(timestamp, b"", error=reason))
        if self.not_accepted or len(self.errors) < self.q.weak:
            return []
        self.not_accepted = True
        [(reason, _)] = Counter(r for r, _ in self.errors.values()).most_common(1)
        return [NotAccepted(timestamp, reason)]

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
