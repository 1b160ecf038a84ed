"""The live web viewer: the streams with their boxes, their health and the sightings, in a browser.

``WebViewer`` (``server.py``) runs it on its own asyncio loop thread; ``app.py`` has the routes,
``frames.py`` the shared, rate-capped JPEG encoding of each stream's newest frame, ``auth.py`` the
access token.
"""
