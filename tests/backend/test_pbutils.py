"""backend.pbutils.Reply: how often it asks Triton whether the client cancelled."""

from nvlm_deploy.backend import pbutils
from tests.triton_repo import pb_utils_standin as pb


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cancellation_is_first_asked_one_period_after_the_reply_was_made(monkeypatch):
    clock, asked = Clock(), []
    monkeypatch.setattr(pbutils.time, "monotonic", clock)

    def cancelled():
        asked.append(clock.now)
        return True

    reply = pbutils.Reply(pb, pb.ResponseSender(), cancelled=cancelled, check_period_s=0.02)
    assert not reply.cancelled() and asked == []  # answered within a period: no round trip to the server
    clock.now += 0.03
    assert reply.cancelled() and asked == [clock.now]
    every_time = pbutils.Reply(pb, pb.ResponseSender(), cancelled=cancelled)
    assert every_time.cancelled() and len(asked) == 2  # period 0: asked at once
