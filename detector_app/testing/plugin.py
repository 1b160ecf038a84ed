"""pytest plugin (registered by the package's ``pytest11`` entry point): the ``replay_recording`` fixture.

    def test_no_false_alarm(replay_recording):
        run = replay_recording("recordings/empty_field.mp4", via="srt")
        assert run.detections == []

Options: ``--detector-model PATH`` (or ``DETECTOR_MODEL``) sets the model used when a test gives none.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from detector_app.testing import Replay


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--detector-model", default=None, help="detector-app model for replay_recording (default: "
                     "DETECTOR_MODEL, else yolo11n.pt or the bundled test model)")


@pytest.fixture
def replay_recording(request: pytest.FixtureRequest) -> Callable[..., Replay]:
    """``replay_recording(video, model=None, via="rtmp", **kw) -> Replay``; models stay loaded for the session."""
    default = request.config.getoption("--detector-model") or os.environ.get("DETECTOR_MODEL")

    def run(video, model=None, via: str = "rtmp", **kw) -> Replay:
        from detector_app.testing import replay

        return replay(video, model=model or default, via=via, **kw)

    return run
