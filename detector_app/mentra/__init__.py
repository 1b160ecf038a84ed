"""MentraOS miniapp side: webhook server, app WebSocket client and glasses feedback.

Layering (see each module's docstring):
``messages`` (wire format) → ``session`` (sans-I/O state machine, uses ``feedback`` and ``commands``)
→ ``client`` (asyncio websockets driver) → ``app`` (webhook server + one client per glasses session).
"""
