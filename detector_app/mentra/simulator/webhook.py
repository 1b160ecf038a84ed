"""The cloud's webhook client: POST `session_request` / `stop_request` to the app like axios does."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from loguru import logger

from .core import SimCore


class WebhookClient:
    """`webhook_attempts` tries, each with `webhook_timeout_s`, `webhook_backoff_s` apart (§2.1);
    every attempt and outcome is recorded (direction "webhook")."""

    def __init__(self, core: SimCore) -> None:
        self.core = core
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def post(self, body: dict[str, Any], user: str) -> bool:
        assert self._http is not None, "WebhookClient.open() first"
        cfg, record = self.core.config, self.core.record
        url = cfg.app_url.rstrip("/") + "/webhook"
        kind = body["type"]
        for attempt in range(1, cfg.webhook_attempts + 1):
            record("webhook", kind, user, {"phase": "sent", "attempt": attempt, "body": body, "url": url})
            try:
                timeout = aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)
                async with self._http.post(url, json=body, timeout=timeout) as resp:
                    text = await resp.text()
                    record("webhook", kind, user, {"phase": "response", "attempt": attempt,
                                                   "status": resp.status, "response": text})
                    if 200 <= resp.status < 300:
                        return True
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                record("webhook", kind, user, {"phase": "failed", "attempt": attempt,
                                               "error": f"{type(exc).__name__}: {exc}"})
                logger.warning("webhook {} to {} failed (attempt {}): {!r}", kind, url, attempt, exc)
            if attempt < cfg.webhook_attempts:
                await asyncio.sleep(cfg.webhook_backoff_s)
        return False
