"""``connectors.email``: defaults, ports by TLS mode, and a message that says how to fix each mistake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.email.settings import EmailSettings
from supportbot.config import load_config
from supportbot.errors import ConfigError


def problems(**section: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        EmailSettings.model_validate(section)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def test_disabled_needs_nothing_and_empty_variables_are_unset() -> None:
    settings = EmailSettings.model_validate({"address": "", "imap": {"password": ""}, "trusted_authserv_id": " "})
    assert settings.enabled is False and settings.address is None and settings.trusted_authserv_id is None
    assert settings.imap.password is None and settings.replies_per_sender_per_hour == 5


@pytest.mark.parametrize(
    ("server", "port"),
    [
        ({"ssl": True}, 993),
        ({"starttls": True}, 143),
        ({}, 143),
        ({"ssl": True, "port": 1993}, 1993),
    ],
)
def test_imap_ports_follow_the_tls_mode(server: dict[str, Any], port: int) -> None:
    assert EmailSettings.model_validate({"imap": server}).imap.effective_port == port


@pytest.mark.parametrize(("server", "port"), [({"ssl": True}, 465), ({"starttls": True}, 587), ({}, 25)])
def test_smtp_ports_follow_the_tls_mode(server: dict[str, Any], port: int) -> None:
    assert EmailSettings.model_validate({"smtp": server}).smtp.effective_port == port


def test_secrets_stay_out_of_repr_and_the_address_is_lower_case() -> None:
    settings = EmailSettings.model_validate(
        {
            "enabled": True,
            "address": "Help@Acme.Example",
            "imap": {"username": "help", "password": "hunter2pass"},
            "smtp": {"username": "help", "password": "hunter2pass"},
        }
    )
    assert settings.address == "help@acme.example" and settings.domain == "acme.example"
    assert "hunter2pass" not in repr(settings)


@pytest.mark.parametrize(
    ("section", "key", "says"),
    [
        ({"enabled": True}, "address", "write the support address"),
        ({"address": "help at acme"}, "address", "is not an email address"),
        ({"imap": {"ssl": True, "starttls": True}}, "imap", "choose one"),
        ({"enabled": True, "address": "a@b.example", "smtp": {"username": "u"}}, "", "set both username and password"),
        (
            {
                "enabled": True,
                "address": "a@b.example",
                "smtp": {"host": "smtp.b.example", "username": "u", "password": "p"},
            },
            "",
            "unencrypted; set smtp.ssl: true (465) or smtp.starttls: true (587)",
        ),
        ({"trusted_authserv_id": "mx google com"}, "trusted_authserv_id", "Authentication-Results"),
        ({"imap": {"idle_renew_s": 1800}}, "imap.idle_renew_s", "less than or equal to 1740"),  # servers drop at 30 min
        ({"imap": {"host": "imap host"}}, "imap.host", "not a host name"),
        ({"adress": "a@b.example"}, "adress", "Extra inputs are not permitted"),
    ],
)
def test_mistakes_say_how_to_fix_them(section: dict[str, Any], key: str, says: str) -> None:
    found = problems(**section)
    assert key in found and says in found[key], found


def test_the_config_file_reports_a_mistake_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("connectors:\n  email:\n    enabled: true\n    address: help@acme.example\n    imap:\n"
                    "      ssl: true\n      starttls: true\n")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "config.yaml:" in str(caught.value) and "connectors.email.imap" in str(caught.value)
    assert "choose one" in str(caught.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text(json.dumps({"connectors": {"email": {"enabled": True, "address": "help@acme.example"}}}))
    assert load_config(ok, env={}).connector("email").address == "help@acme.example"
