"""Stop strings over streamed text: the answer ends before the first one.

The stop strings also travel to the server in ChatRequest.stop; cutting here as well keeps the
answer right whatever the server does with them, and a stream never shows the start of a stop
string that then completes (that text is held back until it cannot be one).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """push() each chunk and send what it returns; finish() gives the held-back rest."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""
        self.stopped = False  # a stop string was found: nothing more is sent

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.stopped = self.pending[:min(found)], "", True
            return out
        keep = self._partial()
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def finish(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _partial(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:n]):
                    best = n
                    break
        return best
