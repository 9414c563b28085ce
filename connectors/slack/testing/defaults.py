"""The fake workspace's ids and tokens, and Slack's rate-limit tiers."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_BOT_TOKEN = "xoxb-1000000001-2000000002-fakeBotTokenForTests"
DEFAULT_APP_TOKEN = "xapp-1-A0FAKEAPP01-3000000003-fakeAppTokenForTests"
DEFAULT_TEAM_ID = "T0FAKETEAM1"
DEFAULT_APP_ID = "A0FAKEAPP01"
DEFAULT_BOT_USER_ID = "U0FAKEBOT01"
DEFAULT_BOT_ID = "B0FAKEBOT01"
VERIFICATION_TOKEN = "fakeVerificationToken0001"  # the deprecated ``token`` field Slack still sends

TIER_LIMITS: Mapping[str, int] = {
    # Calls per minute per workspace, from each method's reference page (the tiers are "N+ per minute":
    # staying under N is safe). chat.postMessage is "special": about one per second per channel.
    "apps.connections.open": 50,
    "chat.appendStream": 100,
    "chat.delete": 50,
    "chat.postEphemeral": 100,
    "chat.startStream": 20,
    "chat.stopStream": 20,
    "chat.update": 50,
    "conversations.history": 50,
    "conversations.info": 50,
    "conversations.list": 20,
    "conversations.replies": 50,
    "reactions.add": 50,
    "users.info": 100,
}
