"""Threading helpers: subjects and tags, Message-IDs and References, reply tokens, conversation keys."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from connectors.email.threads import (
    CROCKFORD,
    make_message_id,
    message_key,
    new_tag,
    normalize_subject,
    references_for,
    reply_subject,
    reply_token_address,
    subject_tag,
    thread_key,
    token_from_recipients,
)

TAG = "ABCD234567"


@pytest.mark.parametrize(
    ("subject", "normal"),
    [
        ("hello", "hello"),
        ("RE: Re: AW: Fwd: hello", "hello"),
        ("Re[2]: x", "x"),
        ("RE[12]: Re(3): x", "x"),
        ("re:re:x", "x"),
        ("Re : bonjour", "bonjour"),
        ("SV: Sv: hej", "hej"),
        ("VS: moi", "moi"),
        ("Antw: hallo", "hallo"),
        ("WG: AW: Rechnung", "Rechnung"),
        ("TR: RE: facture", "facture"),
        ("RIF: R: ordine", "ordine"),
        ("FW: Fwd: fw: x", "x"),
        ("回复：订单 42", "订单 42"),
        ("Re：x", "x"),
        ("Re: x [#ABCD234567]", "x"),
        ("[#ABCD234567] Re: x", "x"),
        ("Re: [#ABCD234567] Fwd: x", "x"),
        ("Re: order [#ABCD234567] damaged", "order damaged"),
        ("Re:   many   spaces\r\n folded\tline ", "many spaces folded line"),
        ("Re: Ärger mit der Bestellung", "Ärger mit der Bestellung"),
        ("Réservation: été", "Réservation: été"),  # a word before a colon is not a prefix
        ("Refund: order 12", "Refund: order 12"),
        ("Reply to my question", "Reply to my question"),
        ("Artikel: x", "Artikel: x"),
        ("Re", "Re"),
        ("Re:", ""),
        ("", ""),
        ("[#IMPORTANT] x", "[#IMPORTANT] x"),  # not Crockford (I, O): a customer's own marker
        ("x [#abcd234567]", "x [#abcd234567]"),
        ("x [#ABCD234]", "x [#ABCD234]"),
    ],
)
def test_normalize_subject(subject: str, normal: str) -> None:
    assert normalize_subject(subject) == normal


@pytest.mark.parametrize(
    ("subject", "tag", "reply"),
    [
        ("hello", None, "Re: hello"),
        ("hello", TAG, f"Re: hello [#{TAG}]"),
        ("RE: Re: AW: Fwd: hello", TAG, f"Re: hello [#{TAG}]"),
        ("Re[2]: x", None, "Re: x"),
        (f"Re: x [#{TAG}]", TAG, f"Re: x [#{TAG}]"),
        (f"Re: x [#{TAG}]", None, f"Re: x [#{TAG}]"),
        (f"[#{TAG}] Re: x [#{TAG}]", None, f"Re: x [#{TAG}]"),
        ("Re: x [#ZZZZ9999ZZ]", TAG, f"Re: x [#{TAG}]"),  # our tag replaces another
        ("", None, "Re: Your message"),
        ("   ", TAG, f"Re: Your message [#{TAG}]"),
        ("Re:", None, "Re: Your message"),
        ("Commande été", None, "Re: Commande été"),
        ("AW: Lieferung für Bestellung Nr. 4711", TAG, f"Re: Lieferung für Bestellung Nr. 4711 [#{TAG}]"),
        ("注文について", None, "Re: 注文について"),
        ("line\r\nBcc: evil@evil.example", None, "Re: line Bcc: evil@evil.example"),  # never a header break
    ],
)
def test_reply_subject(subject: str, tag: str | None, reply: str) -> None:
    assert reply_subject(subject, tag) == reply
    # Answering our own reply again changes nothing: one "Re:", one tag.
    assert reply_subject(reply, tag) == reply
    assert reply_subject("Re: " + reply, tag) == reply


@pytest.mark.parametrize("tag", ["abcd234567", "ABCD", "ABCDEFGHJKMNP", "ILOU123456", f"[#{TAG}]", "", f"{TAG}\r\n"])
def test_reply_subject_refuses_a_bad_tag(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        reply_subject("x", tag)


@pytest.mark.parametrize(
    ("subject", "tag"),
    [
        (f"Re: x [#{TAG}]", TAG),
        ("[#ABCD2345] x", "ABCD2345"),  # 8 characters
        ("x [#ABCD23456789]", "ABCD23456789"),  # 12
        ("x [#ABCD234]", None),  # 7
        ("x [#ABCD234567890]", None),  # 13
        ("x [#abcd234567]", None),
        ("x [#IMPORTANT]", None),
        ("x [#URGENT12]", None),
        (f"x #{TAG}", None),
        (f"x [{TAG}]", None),
        ("", None),
        ("a [#AAAAAAAAAA] b [#BBBBBBBBBB]", "AAAAAAAAAA"),
    ],
)
def test_subject_tag(subject: str, tag: str | None) -> None:
    assert subject_tag(subject) == tag


def test_new_tag_is_random_crockford_and_found_again() -> None:
    tags = [new_tag() for _ in range(2000)]
    assert len(set(tags)) == len(tags)
    assert all(len(tag) == 10 and set(tag) <= set(CROCKFORD) for tag in tags)
    assert set("".join(tags)) == set(CROCKFORD)  # every character is drawn
    for tag in tags[:50]:
        assert subject_tag(reply_subject("Re: order", tag)) == tag
        assert normalize_subject(reply_subject("order", tag)) == "order"


@pytest.mark.parametrize(
    ("domain", "unique", "message_id"),
    [
        ("acme.example", "42", "<sb.42@acme.example>"),
        ("ACME.Example.", "outbox-7_a.b", "<sb.outbox-7_a.b@acme.example>"),
        ("localhost", "x", "<sb.x@localhost>"),
        ("mail.acme.example", "a" * 128, f"<sb.{'a' * 128}@mail.acme.example>"),
    ],
)
def test_make_message_id(domain: str, unique: str, message_id: str) -> None:
    assert make_message_id(domain=domain, unique=unique) == message_id
    assert make_message_id(domain=domain, unique=unique) == message_id  # the same row, the same id
    parsed = _parse(f"Message-ID: {message_id}\r\n\r\n".encode())
    assert parsed["Message-ID"] == message_id
    assert message_key(parsed["Message-ID"]) == thread_key(message_id, b"")


def test_different_rows_get_different_ids() -> None:
    ids = {make_message_id(domain="acme.example", unique=str(n)) for n in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize(
    ("domain", "unique", "problem"),
    [
        ("acme.example", "", "unique"),
        ("acme.example", "a b", "unique"),
        ("acme.example", "a\r\nBcc: x", "unique"),
        ("acme.example", "a..b", "unique"),
        ("acme.example", ".a", "unique"),
        ("acme.example", "a.", "unique"),
        ("acme.example", "a@b", "unique"),
        ("acme.example", "<a>", "unique"),
        ("acme.example", "a" * 129, "unique"),
        ("", "1", "domain"),
        ("-acme.example", "1", "domain"),
        ("acme-.example", "1", "domain"),
        ("acme..example", "1", "domain"),
        ("ac me.example", "1", "domain"),
        ("acme.example\r\n", "1", "domain"),
        ("a@acme.example", "1", "domain"),
        ("x" * 64 + ".example", "1", "domain"),
    ],
)
def test_make_message_id_refuses_what_would_break_the_header(domain: str, unique: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_message_id(domain=domain, unique=unique)


CHAIN = tuple(f"<m{n}@x.example>" for n in range(100))


@pytest.mark.parametrize(
    ("parent", "references", "keep", "expected"),
    [
        (None, [], 20, ()),
        ("<p@x>", [], 20, ("<p@x>",)),
        (None, ["<a@x> <b@x>"], 20, ("<a@x>", "<b@x>")),
        ("<p@x>", ["<a@x> <b@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),
        ("<p@x>", ["<a@x>", "<b@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),
        ("<p@x>", ["<q@x>"], 20, ("<q@x>", "<p@x>")),  # the parent's In-Reply-To when it had no References
        ("<p@x>", ["<a@x>\r\n <b@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),  # a folded header value
        ("<p@x>", ["<a@x> <A@X> <b@x> <a@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),  # no duplicates
        ("<p@x>", ["<a@x> <p@x> <b@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),  # the parent goes last
        ("<p@x>", ["<p@x>"], 20, ("<p@x>",)),
        ("p@x", ["a@x b@x"], 20, ("<a@x>", "<b@x>", "<p@x>")),  # written without brackets
        ("  <p@x>  ", ["<a@x> junk <b@x>"], 20, ("<a@x>", "<b@x>", "<p@x>")),
        ("<p@x>", ["", "   "], 20, ("<p@x>",)),
        # long chains: the root and the last keep-1
        ("<p@x>", CHAIN, 20, (CHAIN[0], *CHAIN[82:], "<p@x>")),
        ("<p@x>", [" ".join(CHAIN)], 5, (CHAIN[0], *CHAIN[97:], "<p@x>")),
        ("<p@x>", CHAIN, 2, (CHAIN[0], "<p@x>")),
        ("<p@x>", CHAIN[:19], 20, (*CHAIN[:19], "<p@x>")),  # exactly keep: untouched
        (None, CHAIN, 3, (CHAIN[0], CHAIN[98], CHAIN[99])),
    ],
)
def test_references_for(parent: str | None, references: list[str], keep: int, expected: tuple[str, ...]) -> None:
    found = references_for(parent, references, keep=keep)
    assert found == expected
    assert len(found) <= keep
    assert len({x.lower() for x in found}) == len(found)


def test_references_keep_the_root_and_the_parent_at_least() -> None:
    with pytest.raises(ValueError, match="keep"):
        references_for("<p@x>", ["<a@x>"], keep=1)
    assert len(references_for("<p@x>", CHAIN)) == 20  # the default


@pytest.mark.parametrize(
    ("address", "token", "reply_address"),
    [
        ("help@acme.example", "ABCD2345", "help+ABCD2345@acme.example"),
        ("help@acme.example", "abcd2345", "help+ABCD2345@acme.example"),
        ("company+support@gmail.example", TAG, f"company+support+{TAG}@gmail.example"),
    ],
)
def test_reply_token_address(address: str, token: str, reply_address: str) -> None:
    assert reply_token_address(address, token) == reply_address
    assert token_from_recipients([reply_address], address) == token.upper()


@pytest.mark.parametrize(
    ("address", "token", "problem"),
    [
        ("help", TAG, "address"),
        ("help@", TAG, "address"),
        ("@acme.example", TAG, "address"),
        ("a b@acme.example", TAG, "address"),
        ("Help <help@acme.example>", TAG, "address"),
        ("help@acme.example", "abc", "token"),
        ("help@acme.example", "ab-cd", "token"),
        ("help@acme.example", "x" * 65, "token"),
        ("help@acme.example", "ABCD\r\n", "token"),
    ],
)
def test_reply_token_address_refuses(address: str, token: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        reply_token_address(address, token)


@pytest.mark.parametrize(
    ("recipients", "token"),
    [
        (["help+ABCD2345@acme.example"], "ABCD2345"),
        (["Help+abcd2345@ACME.Example"], "ABCD2345"),  # servers may change case
        (["Support <help+ABCD2345@acme.example>"], "ABCD2345"),
        (["jane@customer.example, help+ABCD2345@acme.example"], "ABCD2345"),  # one To header of several
        (["jane@customer.example", "help+FIRST111@acme.example", "help+SECOND22@acme.example"], "FIRST111"),
        (["help@acme.example"], None),
        (["help+ABCD2345@other.example"], None),
        (["helpdesk+ABCD2345@acme.example"], None),
        (["xhelp+ABCD2345@acme.example"], None),
        (["help+AB@acme.example"], None),
        (["help+ABCD-2345@acme.example"], None),
        (["help+@acme.example"], None),
        (["help+ABCD2345@acme.example.evil.example"], None),
        ([], None),
        (["not an address", ""], None),
    ],
)
def test_token_from_recipients(recipients: list[str], token: str | None) -> None:
    assert token_from_recipients(recipients, "Help@Acme.Example") == token
    assert token_from_recipients(iter(recipients), "help@acme.example") == token


def test_thread_key_is_stable_and_normalised() -> None:
    key = thread_key("<ABC@Example.com>", b"first copy")
    # Pinned: keys are stored, so their form must never change.
    assert key == "m:t3hlcned27yyp3abj7lnjbkncqqm7rrugkfpqx2r2azdxkdcfyqq"
    assert len(key) <= 64 and re.fullmatch(r"m:[a-z2-7]+", key)
    for same in ("abc@example.com", "  <abc@example.com>  ", "<abc@EXAMPLE.COM>", "(comment) <abc@example.com>"):
        assert thread_key(same, b"another copy") == key
    assert message_key("<abc@example.com>") == key
    assert thread_key("<abd@example.com>", b"first copy") != key


def test_thread_key_without_message_id_hashes_the_raw_mail() -> None:
    key = thread_key(None, b"raw mail")
    assert key.startswith("r:") and len(key) <= 64
    assert thread_key("", b"raw mail") == key
    assert thread_key("<>", b"raw mail") == key
    assert thread_key("  ", b"raw mail") == key
    assert thread_key(None, b"raw mail!") != key
    assert thread_key("raw mail", b"raw mail") != key  # the two forms never collide


@pytest.mark.parametrize("message_id", ["", "   ", "<>"])
def test_message_key_refuses_an_empty_id(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        message_key(message_id)


def test_keys_of_odd_ids_never_raise() -> None:
    raw = b"Message-ID: <caf\xe9\xff@x.example>\r\n\r\n"
    odd = str(_parse(raw)["Message-ID"])
    assert thread_key(odd, raw).startswith("m:")
    assert message_key("<\ud800@x>").startswith("m:")


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
