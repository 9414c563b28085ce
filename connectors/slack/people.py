"""Who wrote (``users.info``, cached) and the images they shared (downloaded with the bot token, capped).

Slack's user record is Slack's word: its ``profile.email`` (scope ``users:read.email``) makes a
verified customer when the user belongs to the installing workspace (or its Enterprise Grid org) and
Slack does not say the email is unconfirmed; see ``SlackChannel.prepare``. Deleted users and bots are
never answered.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from connectors.slack.api import error_code, is_transient
from supportbot.messages import ImagePart

__all__ = ["Downloads", "SlackUser", "Users", "image_type"]

log = logging.getLogger("supportbot.slack")


@dataclass(frozen=True, kw_only=True, slots=True)
class SlackUser:
    id: str
    name: str | None
    email: str | None
    team: str | None = None
    """The user's own workspace (another organisation's, for an external user in a shared channel)."""
    enterprise: str | None = None
    """The user's Enterprise Grid org, if any."""
    email_confirmed: bool | None = None
    """``is_email_confirmed``: False when Slack says the email is not confirmed, None when it does not say."""
    deleted: bool = False
    bot: bool = False

    @property
    def person(self) -> bool:
        """A living human account (not deleted, not a bot or app user)."""
        return not self.deleted and not self.bot


class Users:
    """``users.info`` with a cache of ``ttl`` seconds (names and emails change rarely; customers write often)."""

    def __init__(self, api: AsyncWebClient, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, SlackUser]] = {}
        self.lookups = 0  # calls made (tests count them)

    def cached_name(self, user_id: str) -> str | None:
        """The display name of a user seen lately, without asking Slack (None if unknown)."""
        entry = self._cache.get(user_id)
        return entry[1].name if entry else None

    async def get(self, user_id: str) -> SlackUser | None:
        """The user's record, or None when Slack will not say (``user_not_found``, a missing scope; logged).

        Raises:
            SlackApiError, aiohttp.ClientError, TimeoutError: Slack could not answer now (a 429, a 5xx, a
                broken connection); asking again later may work.
        """
        entry = self._cache.get(user_id)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        self.lookups += 1
        try:
            response = await self.api.users_info(user=user_id)
        except SlackApiError as exc:
            if is_transient(exc):
                raise
            log.warning("users.info for %s failed: %s", user_id, error_code(exc))
            return None
        data: Mapping[str, Any] = response.get("user") or {}
        profile: Mapping[str, Any] = data.get("profile") or {}
        name = (
            profile.get("real_name") or data.get("real_name") or profile.get("display_name") or data.get("name") or None
        )
        user = SlackUser(
            id=user_id,
            name=name,
            email=profile.get("email") or None,
            team=data.get("team_id") or profile.get("team") or None,
            enterprise=(data.get("enterprise_user") or {}).get("enterprise_id") or None,
            email_confirmed=data["is_email_confirmed"] if isinstance(data.get("is_email_confirmed"), bool) else None,
            deleted=bool(data.get("deleted")),
            bot=bool(data.get("is_bot") or data.get("is_app_user")) and user_id != "USLACKBOT",
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user_id] = (self.clock() + self.ttl, user)
        return user


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)


def image_type(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``gif`` or ``webp`` from the file's first bytes; None for anything else."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class Downloads:
    """Images of a customer's message as ``data:`` URLs for the model.

    Only files on Slack's file hosts (or the configured API's host) are fetched, with the bot token;
    only PNG, JPEG, GIF and WebP content, at most ``max_images`` of at most ``max_bytes`` each.
    """

    def __init__(
        self, session: aiohttp.ClientSession, *, token: str, api_url: str, max_images: int, max_bytes: int
    ) -> None:
        self.session = session
        self.token = token
        self.api_host = urlsplit(api_url).hostname or ""
        self.max_images = max_images
        self.max_bytes = max_bytes

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == self.api_host:
            return parts.scheme in ("http", "https")
        return parts.scheme == "https" and (
            host == "files.slack.com" or host.endswith((".slack.com", ".slack-edge.com"))
        )

    async def images(self, files: Sequence[Mapping[str, Any]]) -> tuple[tuple[ImagePart, ...], list[str]]:
        """The images, and a note for each file left out (for the model, so it can tell the customer)."""
        images: list[ImagePart] = []
        notes: list[str] = []
        for item in files:
            name = str(item.get("name") or "file")
            mimetype = str(item.get("mimetype") or "")
            if not mimetype.startswith("image/"):
                notes.append(f"{name} was not included: only images are read")
                continue
            if len(images) >= self.max_images:
                notes.append(f"{name} was not included: at most {self.max_images} images are read per message")
                continue
            size = int(item.get("size") or 0)
            if size > self.max_bytes:
                notes.append(f"{name} was not included: it is larger than {self.max_bytes:,} bytes")
                continue
            url = str(item.get("url") or "")
            if not url or not self._allowed(url):
                log.warning("not downloading %s: %r is not a Slack file URL", name, url[:200])
                notes.append(f"{name} could not be read")
                continue
            data = await self._download(url)
            if data is None:
                notes.append(f"{name} could not be read")
                continue
            if len(data) > self.max_bytes:
                notes.append(f"{name} was not included: it is larger than {self.max_bytes:,} bytes")
                continue
            kind = image_type(data)
            if kind is None:
                notes.append(f"{name} was not included: it is not a PNG, JPEG, GIF or WebP image")
                continue
            images.append(ImagePart(url=f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"))
        return tuple(images), notes

    async def _download(self, url: str) -> bytes | None:
        """The file's bytes, at most ``max_bytes + 1`` of them (None when it cannot be fetched)."""
        try:
            async with self.session.get(
                url, headers={"Authorization": f"Bearer {self.token}"}, max_redirects=3,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:  # fmt: skip
                if response.status != 200 or not response.content_type.startswith(("image/", "application/octet")):
                    # Slack answers a bad token or a missing files:read scope with its sign-in page (HTML).
                    log.warning("downloading a Slack file failed: HTTP %s %s (does the app have files:read?)",
                                response.status, response.content_type)  # fmt: skip
                    return None
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.content.iter_chunked(65536):
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > self.max_bytes:
                        break
                return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("downloading a Slack file failed: %s: %s", type(exc).__name__, exc)
            return None
