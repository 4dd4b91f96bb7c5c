"""How late the exchange answers, and how late it reads: what the limiters sharing one
exchange learn from its answers.

The fastest answer is the way there and back with no wait, as near as known. An answer slower
than that was either read late or only answered late, and one answer cannot say which; the
answers to the requests that left about when it did can. An exchange short of time reads
everything that came in together late, while an answer slower on its way back is slower on
its own: among its neighbours, one quick answer shows the exchange was reading at once.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

#: Answers weighed for how late the exchange read a request: those of the requests sent
#: nearest it, this many.
NEIGHBOURS = 16
#: Answers kept for that, the latest sent.
ANSWERS_KEPT = 1024


@dataclass(slots=True)
class Fastest:
    """The least seconds from a request leaving to its answer that the limiters sharing it
    have seen: the way to the exchange and back with no wait, as near as known; and the
    latest answers, to tell a request read late from one answered late."""

    seconds: float = math.inf
    #: (loop time it left, seconds to its answer) of the latest requests answered, in the
    #: order they left.
    answers: list[tuple[float, float]] = field(default_factory=list)

    def took(self, sent_at: float, seconds: float) -> float:
        """A request that left at ``sent_at`` was answered ``seconds`` later; the fastest now."""
        bisect.insort(self.answers, (sent_at, seconds))
        if len(self.answers) > ANSWERS_KEPT:
            del self.answers[0]
        self.seconds = min(self.seconds, seconds)
        return self.seconds

    def reading_late(self, sent_at: float) -> float:
        """How much later than the fastest the exchange read a request that left at
        ``sent_at``: the least excess among the answers to the ``NEIGHBOURS`` requests that
        left nearest it. An exchange short of time reads everything that came in together
        late; an answer that was only slower on its way back has neighbours that were not."""
        answers, count = self.answers, len(self.answers)
        after = bisect.bisect_left(answers, (sent_at,))
        before, least = after - 1, math.inf
        for _ in range(min(NEIGHBOURS, count)):
            # The nearer of the next one after and the next before; one side may be spent.
            later = after < count and (
                before < 0 or answers[after][0] - sent_at < sent_at - answers[before][0]
            )
            if later:
                least, after = min(least, answers[after][1]), after + 1
            else:
                least, before = min(least, answers[before][1]), before - 1
        return max(0.0, least - self.seconds) if least < math.inf else 0.0

    def hold(self, sent_at: float, margin: float) -> float:
        """How much longer than its period the lane of a request that left at ``sent_at``
        waits, its period being ``margin`` seconds over the rule: what of the reading's
        lateness half the margin does not cover. The other half stays for the next request's
        own jitter."""
        return max(0.0, self.reading_late(sent_at) - margin / 2)
