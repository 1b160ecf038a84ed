"""The decode thread's one clock (``SessionClock``): media time since the session's first frame."""

from __future__ import annotations

import pytest

from detector_app.video.decoder import SessionClock


def test_session_clock_counts_from_the_first_frame_and_restarts_with_a_new_stream():
    clock = SessionClock()
    assert [clock(t) for t in (1.4, 1.4 + 1 / 15, 3.4)] == pytest.approx([0.0, 1 / 15, 2.0])  # MPEG-TS offset gone
    assert clock(None) is None
    assert clock(3.3) == pytest.approx(1.9)  # a small step back (reordering) is not a new stream
    assert clock(0.0) == 0.0 and clock(0.5) == pytest.approx(0.5)  # timestamps reset: a new publisher
    clock.reset()
    assert clock(10.0) == 0.0
