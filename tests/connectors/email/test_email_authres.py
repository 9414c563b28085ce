"""Authentication-Results (RFC 8601) parsing and the DMARC verdict of our own MX only."""

from __future__ import annotations

import random
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from connectors.email.authres import AuthResult, dmarc_verified, parse_authentication_results

TRUSTED = "mx.acme.example"

GMAIL = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.com header.s=20230601 header.b=Xy7+/Qa=;\r\n"
    "       arc=pass (i=1 spf=pass spfdomain=example.com dkim=pass dkdomain=example.com\r\n"
    "       dmarc=pass fromdomain=example.com);\r\n"
    "       spf=pass (google.com: domain of jane@example.com designates 209.85.220.41 as permitted sender)"
    " smtp.mailfrom=jane@example.com;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.com"
)
MICROSOFT = (
    "spf=pass (sender IP is 40.107.22.51)\r\n"
    " smtp.mailfrom=example.com; dkim=pass (signature was verified)\r\n"
    " header.d=example.com;dmarc=pass action=none\r\n"
    " header.from=example.com;compauth=pass reason=100"
)
FASTMAIL = (
    "mx4.messagingengine.com;\r\n"
    "    dkim=pass (2048-bit rsa key sha256) header.d=example.com\r\n"
    "      header.i=@example.com header.b=AbCdEfGh header.a=rsa-sha256\r\n"
    "      header.s=fm2 x-bits=2048;\r\n"
    "    dmarc=pass policy.published-domain-policy=quarantine\r\n"
    "      policy.published-subdomain-policy=none\r\n"
    "      policy.applied-disposition=none policy.evaluated-disposition=none\r\n"
    "      (p=quarantine,sp=none,d=none,d.eval=none) policy.policy-from=p\r\n"
    "      header.from=example.com;\r\n"
    "    iprev=pass smtp.remote-ip=203.0.113.5 (mail.example.com);\r\n"
    "    spf=pass smtp.mailfrom=jane@example.com\r\n"
    "      smtp.helo=mail.example.com;\r\n"
    "    x-aligned-from=pass (Address match);\r\n"
    "    x-me-sender=none;\r\n"
    "    x-return-mx=pass header.domain=example.com policy.is_org=yes\r\n"
    "      (MX Records found: mx1.example.com);\r\n"
    "    x-tls=pass smtp.version=TLSv1.3 smtp.cipher=TLS_AES_256_GCM_SHA384\r\n"
    "      smtp.bits=256/256;\r\n"
    "    x-vs=clean score=-100 state=0"
)
OPENDMARC = "mx.acme.example; dmarc=pass (p=none dis=none) header.from=example.com"


def r(method: str, result: str, **properties: str) -> AuthResult:
    """An expected result; ``header_from`` stands for ``header.from``."""
    return AuthResult(method=method, result=result, properties={k.replace("_", "."): v for k, v in properties.items()})


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def mail(*results: str, sender: str = "Jane Doe <Jane@Example.com>", extra: tuple[str, ...] = ()) -> EmailMessage:
    """A mail whose Authentication-Results headers are ``results``, topmost first, values as written."""
    lines = [f"Authentication-Results: {value}" for value in results]
    lines += [f"From: {sender}", "To: help@acme.example", "Subject: order", "Message-ID: <1@example.com>", *extra]
    return parse(("\r\n".join(lines) + "\r\n\r\nhello\r\n").encode())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (OPENDMARC, ("mx.acme.example", (r("dmarc", "pass", header_from="example.com"),))),
        (
            GMAIL,
            (
                "mx.google.com",
                (
                    r("dkim", "pass", **{"header.i": "@example.com", "header.s": "20230601", "header.b": "Xy7+/Qa="}),
                    r("arc", "pass"),  # the comment's "dmarc=pass" is a comment, not a result
                    r("spf", "pass", **{"smtp.mailfrom": "jane@example.com"}),
                    r("dmarc", "pass", header_from="example.com"),
                ),
            ),
        ),
        (
            MICROSOFT,  # no authserv-id at all
            (
                "",
                (
                    r("spf", "pass", **{"smtp.mailfrom": "example.com"}),
                    r("dkim", "pass", **{"header.d": "example.com"}),
                    r("dmarc", "pass", action="none", header_from="example.com"),
                    r("compauth", "pass", reason="100"),
                ),
            ),
        ),
        # a version after the authserv-id; "none" as the only result
        (
            "mx.example.com 1; spf=pass smtp.mailfrom=a@b.example",
            ("mx.example.com", (r("spf", "pass", **{"smtp.mailfrom": "a@b.example"}),)),
        ),
        ("mx.example.com; none", ("mx.example.com", ())),
        ("mx.example.com 1;\r\n\tnone", ("mx.example.com", ())),
        # case: ids and keys lower-cased, values as written
        (
            "MX.Example.COM; DMARC=PASS Header.From=Example.com",
            ("mx.example.com", (r("dmarc", "pass", header_from="Example.com"),)),
        ),
        # comments anywhere, nested, with escapes, quotes and semicolons inside
        (
            '(first) mx.example.com (a (nested) one) 1 (v); (x) dmarc (y) = (z) pass (p=none; \\) "q)'
            " header (h) . (i) from = example.com (e)",
            ("mx.example.com", (r("dmarc", "pass", header_from="example.com"),)),
        ),
        # quoted strings: semicolons, parentheses and escapes inside are data
        (
            'mx.example.com; dkim=fail reason="signature (bad); expired \\"really\\"" header.d=example.com',
            (
                "mx.example.com",
                (r("dkim", "fail", reason='signature (bad); expired "really"', **{"header.d": "example.com"}),),
            ),
        ),
        ('"mx.example.com"; spf=none', ("mx.example.com", (r("spf", "none"),))),
        (
            'mx.example.com; spf=pass smtp.mailfrom="john doe"@example.com',
            ("mx.example.com", (r("spf", "pass", **{"smtp.mailfrom": "john doe@example.com"}),)),
        ),
        # policy.*, header.d, smtp.*, a method version, an empty last value, trailing semicolons
        (
            "mx.example.com; dmarc=fail policy.dmarc=reject header.from=example.com; dkim/1=pass header.d=example.com;",
            (
                "mx.example.com",
                (
                    r("dmarc", "fail", **{"policy.dmarc": "reject", "header.from": "example.com"}),
                    r("dkim", "pass", **{"header.d": "example.com"}),
                ),
            ),
        ),
        ("mx.example.com; spf=none smtp.mailfrom=", ("mx.example.com", (r("spf", "none", **{"smtp.mailfrom": ""}),))),
        # forwarded mail: SRS and VERP senders hold '=' and '+'
        (
            "mx.example.com; spf=pass smtp.mailfrom=SRS0=HhH=TT=example.com=jane@fwd.example",
            ("mx.example.com", (r("spf", "pass", **{"smtp.mailfrom": "SRS0=HhH=TT=example.com=jane@fwd.example"}),)),
        ),
    ],
)
def test_parse(value: str, expected: tuple[str, tuple[AuthResult, ...]]) -> None:
    assert parse_authentication_results(value) == expected


def test_parse_real_fastmail_header() -> None:
    parsed = parse_authentication_results(FASTMAIL)
    assert parsed is not None
    authserv_id, results = parsed
    assert authserv_id == "mx4.messagingengine.com"
    assert [(x.method, x.result) for x in results] == [
        ("dkim", "pass"), ("dmarc", "pass"), ("iprev", "pass"), ("spf", "pass"), ("x-aligned-from", "pass"),
        ("x-me-sender", "none"), ("x-return-mx", "pass"), ("x-tls", "pass"), ("x-vs", "clean"),
    ]  # fmt: skip
    assert results[1].properties["header.from"] == "example.com"
    assert results[1].properties["policy.published-domain-policy"] == "quarantine"
    assert results[0].properties["header.s"] == "fm2"
    assert results[7].properties["smtp.bits"] == "256/256"
    assert dict(results[8].properties) == {"score": "-100", "state": "0"}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "mx.example.com",  # an authserv-id alone carries no verdict
        "mx.example.com;",
        "mx.example.com; dmarc",
        "mx.example.com; dmarc=",
        "mx.example.com; =pass",
        "mx.example.com; dmarc=pass header.from",
        "mx.example.com; dmarc=pass header.from= header.d=x",
        "mx.example.com; dmarc=pass garbage",
        "mx.example.com; dmarc=pass (unclosed comment header.from=example.com",
        "mx.example.com; dmarc=pass) header.from=example.com",
        'mx.example.com; dkim=fail reason="unclosed',
        "mx.example.com; none; spf=pass",  # "none" must be alone
        "mx.example.com extra words; spf=pass",
        "mx.example.com; dmarc=pass header.from=evil.example header.from=example.com",  # which one counted?
        "mx@example.com; spf=pass",
        "; dmarc=pass header.from=example.com",
    ],
)
def test_unparsable_is_none(value: str) -> None:
    assert parse_authentication_results(value) is None


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ((OPENDMARC,), "jane@example.com"),
        (("mx.acme.example 1; dmarc=pass header.from=example.com",), "jane@example.com"),
        (("MX.ACME.Example; DMARC=Pass Header.From=EXAMPLE.COM",), "jane@example.com"),
        (("mx.acme.example; dmarc=pass header.from=jane@example.com",), "jane@example.com"),  # an address written there
        (("mx.acme.example; dmarc=pass header.from=example.com.",), "jane@example.com"),
        ((GMAIL.replace("mx.google.com", TRUSTED),), "jane@example.com"),
        # not pass, not aligned, or no header.from
        (("mx.acme.example; dmarc=fail (p=reject) header.from=example.com",), None),
        (("mx.acme.example; dmarc=none header.from=example.com",), None),
        (("mx.acme.example; dmarc=temperror header.from=example.com",), None),
        (("mx.acme.example; dmarc=pass header.from=evil.example",), None),
        (("mx.acme.example; dmarc=pass header.from=mail.example.com",), None),
        (("mx.acme.example; dmarc=pass header.from=",), None),
        (("mx.acme.example; dmarc=pass",), None),
        (("mx.acme.example; dmarc=pass policy.dmarc=none",), None),
        # SPF or DKIM passing alone proves nothing about the From domain
        (("mx.acme.example; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=jane@example.com",), None),
        (("mx.acme.example; none",), None),
        # two dmarc verdicts in our header: ambiguous
        (("mx.acme.example; dmarc=pass header.from=example.com; dmarc=fail header.from=example.com",), None),
        # other authserv-ids are ignored, whatever they say
        (("evil.example; dmarc=pass header.from=example.com",), None),
        ((GMAIL,), None),
        (("mx.acme.example.evil.example; dmarc=pass header.from=example.com",), None),
        (
            ("evil.example; dmarc=pass header.from=example.com", "mx.acme.example; dmarc=fail header.from=example.com"),
            None,
        ),
        (("evil.example; dmarc=fail header.from=example.com", OPENDMARC), "jane@example.com"),
        # only the topmost header of our id counts: ours is prepended, lower ones came with the mail
        ((OPENDMARC, "mx.acme.example; dmarc=fail header.from=example.com"), "jane@example.com"),
        (("mx.acme.example; dmarc=fail header.from=example.com", OPENDMARC), None),
        (("mx.acme.example; spf=pass smtp.mailfrom=jane@example.com", OPENDMARC), None),
        (("mx.acme.example; none", OPENDMARC), None),
        (("mx.acme.example; dmarc=pass garbage=(unclosed", OPENDMARC), None),
        (("mx.acme.example; ???", OPENDMARC), None),
        # Microsoft 365 writes no authserv-id: nothing can name it as trusted
        ((MICROSOFT,), None),
    ],
)
def test_dmarc_verified(results: tuple[str, ...], expected: str | None) -> None:
    assert dmarc_verified(mail(*results), trusted_authserv_id=TRUSTED) == expected


def test_folded_headers_from_raw_bytes() -> None:
    raw = (
        b"Authentication-Results: mx.acme.example (Postfix)\r\n"
        b"\t1;\r\n"
        b"  dkim=pass (2048-bit key; unprotected)\r\n"
        b"  header.d=example.com header.i=@example.com;\r\n"
        b"  spf=pass (mx.acme.example: domain of jane@example.com designates 192.0.2.1 as permitted sender)\r\n"
        b"  smtp.mailfrom=jane@example.com;\r\n"
        b"  dmarc=pass (p=none dis=none)\r\n"
        b"    header.from=example.com\r\n"
        b"From: Jane <jane@example.com>\r\n"
        b"Subject: hi\r\n\r\nhello\r\n"
    )
    message = parse(raw)
    assert dmarc_verified(message, trusted_authserv_id="mx.acme.example") == "jane@example.com"
    # The same header, its dmarc verdict folded onto the next line as "fail": not verified.
    assert dmarc_verified(parse(raw.replace(b"dmarc=pass", b"dmarc=\r\n fail")), trusted_authserv_id=TRUSTED) is None


@pytest.mark.parametrize(
    ("value", "trusted"),
    [(GMAIL, "mx.google.com"), (FASTMAIL, "mx4.messagingengine.com"), (OPENDMARC, "MX.Acme.Example")],
)
def test_real_world_headers_verify_with_their_own_id(value: str, trusted: str) -> None:
    assert dmarc_verified(mail(value), trusted_authserv_id=trusted) == "jane@example.com"
    assert dmarc_verified(mail(value), trusted_authserv_id="mx.other.example") is None


@pytest.mark.parametrize(
    ("sender", "extra", "expected"),
    [
        ("Jane <jane@example.com>", ("Reply-To: attacker@evil.example",), "jane@example.com"),  # Reply-To never counts
        ("=?utf-8?q?J=C3=BCrgen?= <Juergen@Example.com>", (), "juergen@example.com"),
        ("<jane@example.com>, <boss@example.com>", (), None),  # two authors
        ("jane@example.com", ("From: boss@example.com",), None),  # two From headers
        ("victim@example.com <evil@evil.example>", (), None),  # read differently by different parsers
        ("undisclosed-recipients:;", (), None),
        ("example.com", (), None),
    ],
)
def test_the_from_header_must_be_one_clear_address(sender: str, extra: tuple[str, ...], expected: str | None) -> None:
    assert dmarc_verified(mail(OPENDMARC, sender=sender, extra=extra), trusted_authserv_id=TRUSTED) == expected


def test_without_from_or_trusted_id_nothing_is_verified() -> None:
    no_from = parse(f"Authentication-Results: {OPENDMARC}\r\nSubject: x\r\n\r\nhi\r\n".encode())
    assert dmarc_verified(no_from, trusted_authserv_id=TRUSTED) is None
    assert dmarc_verified(mail(OPENDMARC), trusted_authserv_id="") is None
    assert dmarc_verified(mail(MICROSOFT), trusted_authserv_id="  ") is None


def test_a_forged_header_cannot_impersonate_ours_by_case_or_quotes() -> None:
    forged = '"MX.ACME.EXAMPLE"; dmarc=pass header.from=example.com'
    # Quoted or not, any case, the same id is the same id: lower down, it does not count.
    assert (
        dmarc_verified(mail("mx.acme.example; dmarc=fail header.from=example.com", forged), trusted_authserv_id=TRUSTED)
        is None
    )
    assert dmarc_verified(mail(forged), trusted_authserv_id=TRUSTED) == "jane@example.com"


SAMPLES = (GMAIL, MICROSOFT, FASTMAIL, OPENDMARC)


def test_garbage_never_raises() -> None:
    rng = random.Random(20261201)
    alphabet = 'abcdmx.;=()"\\ \t\r\n@/+-_01' + "é\udcff\x00"
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        parsed = parse_authentication_results(value)
        if parsed is not None:
            authserv_id, results = parsed
            assert authserv_id == authserv_id.lower()
            assert all(x.method == x.method.lower() and x.result == x.result.lower() for x in results)


def test_mutated_real_headers_never_raise_nor_verify_someone_else() -> None:
    rng = random.Random(8601)
    alphabet = ';=()"\\ .@\r\n\tx'
    for _ in range(1500):
        text = list(rng.choice(SAMPLES).replace("mx.google.com", TRUSTED))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.5 and at < len(text):
                del text[at]
            else:
                text.insert(at, rng.choice(alphabet))
        value = "".join(text)
        parse_authentication_results(value)
        raw = f"Authentication-Results: {value}\r\nFrom: jane@example.com\r\n\r\nhi\r\n".encode(
            "utf-8", "surrogateescape"
        )
        assert dmarc_verified(parse(raw), trusted_authserv_id=TRUSTED) in (None, "jane@example.com")


def test_random_mail_headers_never_verify() -> None:
    rng = random.Random(7489)
    alphabet = 'abcdmx.;=()"\\ @:-' + "acme"
    for _ in range(500):
        lines = [
            "Authentication-Results: " + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
            for _ in range(rng.randint(1, 3))
        ]
        raw = ("\r\n".join([*lines, "From: jane@example.com"]) + "\r\n\r\nhi\r\n").encode()
        assert dmarc_verified(parse(raw), trusted_authserv_id=TRUSTED) is None
