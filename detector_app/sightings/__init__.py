"""Sightings: one row per confirmed track, with a best-frame thumbnail and an MP4 clip cut from the
received packets (no re-encoding).

``store`` (SQLite, the API the web viewer and ``sightings list|export`` read), ``packets`` (the bounded
ring the decode thread feeds), ``clips`` (PyAV remux), ``thumbs`` (JPEG with the box drawn),
``recorder`` (track events → rows, thumbnails, clips, on one worker thread).
"""
