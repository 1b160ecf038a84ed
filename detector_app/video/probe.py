"""What a recorded video is, before any pipeline starts (sizes the model export to its aspect)."""

from __future__ import annotations

from pathlib import Path

import av


def video_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the first video stream, or None if it cannot be read (the pipeline reports why)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            ctx = c.streams.video[0].codec_context
            return (ctx.width, ctx.height)
    except (av.error.FFmpegError, OSError):
        return None
