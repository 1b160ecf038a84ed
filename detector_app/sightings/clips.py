"""Remux a range of received packets into an MP4 clip: stream copy, no re-encoding.

The packets are the glasses' own H.264 access units (``packets.PacketRing``); only their timestamps
change (shifted so the clip starts at 0). ``+faststart`` puts the index first, so a browser's
``<video>`` plays it before it has downloaded the whole file. Written to a temporary name and
renamed, so a reader (or a crash) never sees half a clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av

from detector_app.sightings.packets import PacketRange


@dataclass(frozen=True, slots=True)
class ClipInfo:
    path: Path
    start_t: float  # raw stream time of the clip's first packet (a keyframe)
    end_t: float  # raw stream time of its last packet
    packets: int
    nbytes: int  # file size


def write_clip(packets: PacketRange, path: Path) -> ClipInfo:
    """Write ``packets`` to ``path`` (MP4, the packets' own codec); the file appears only when complete."""
    if not packets.packets or not packets.packets[0].keyframe:
        raise ValueError("a clip must start at a keyframe")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    first = packets.packets[0]
    # The keyframe's pts is the earliest presentation time of its GOP: shifted to 0, the clip starts at 0
    # (with B-frames its dts then starts below 0, which MP4 stores as a composition offset).
    origin = first.pts if first.pts is not None else first.dts or 0
    tb = packets.format.time_base
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream_from_template(packets.format.template)
            for p in packets.packets:
                pkt = av.Packet(p.data)
                pkt.pts = None if p.pts is None else p.pts - origin
                pkt.dts = None if p.dts is None else p.dts - origin
                pkt.time_base = tb
                pkt.is_keyframe = p.keyframe
                pkt.stream = stream
                out.mux(pkt)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ClipInfo(path, packets.start_t, packets.end_t, len(packets.packets), path.stat().st_size)
