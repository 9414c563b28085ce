"""From a raw mail to an ``InboundMessage``: loops skipped, DMARC identity, and threads bound to their sender."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest

from connectors.email.receive import Receiver
from connectors.email.settings import EmailSettings
from connectors.email.state import Keeper
from supportbot.channels import Accepted, InboundMessage, OperatorReply, Reply, StorageError

MX = "mx.acme.example"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class FakeIntake:
    """The core's side of the contract in memory: unique external ids, like the inbox."""

    messages: dict[str, InboundMessage] = field(default_factory=dict)
    fail_with: BaseException | None = None
    turns: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def submit(self, message: InboundMessage) -> Accepted:
        if self.fail_with is not None:
            raise self.fail_with
        if message.external_id in self.messages:
            return Accepted(turn=0, duplicate=True)
        self.messages[message.external_id] = message
        return Accepted(turn=next(self.turns))

    async def operator_reply(self, reply: OperatorReply) -> bool:
        raise AssertionError("the email channel never sends operator replies to the core")

    async def delivered(self, channel: str, external_id: str) -> Reply | None:
        return None


@dataclass
class Setup:
    intake: FakeIntake
    keeper: Keeper
    receiver: Receiver
    state: dict[str, str]

    def last(self) -> InboundMessage:
        return list(self.intake.messages.values())[-1]


def make(**settings: Any) -> Setup:
    state: dict[str, str] = {}

    async def get(key: str) -> str | None:
        return state.get(key)

    async def put(key: str, value: str) -> None:
        state[key] = value

    keeper = Keeper(get, put)
    intake = FakeIntake()
    options = {"enabled": True, "address": "help@acme.example", "trusted_authserv_id": MX, **settings}
    receiver = Receiver(EmailSettings.model_validate(options), keeper, intake, max_chars=8000, max_images=4,
                        max_image_bytes=1_000_000)  # fmt: skip
    return Setup(intake, keeper, receiver, state)


@pytest.fixture
def setup() -> Setup:
    return make()


def mail(
    text: str = "Where is my order A1001?",
    *,
    sender: str = "ana@example.com",
    subject: str = "Order A1001",
    message_id: str = "<m1@example.com>",
    dmarc: str | None = "pass",
    authserv: str = MX,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    image: bytes | None = None,
) -> bytes:
    message = EmailMessage()
    if dmarc is not None:
        domain = sender.rpartition("@")[2]
        message["Authentication-Results"] = f"{authserv}; dmarc={dmarc} header.from={domain}"
    message["From"] = f"Ana Example <{sender}>"
    message["To"] = "help@acme.example"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = references
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    if image is not None:
        message.add_attachment(image, maintype="image", subtype="png", filename="photo.png")
    return message.as_bytes()


async def test_a_new_mail_is_a_verified_customers_message_with_its_subject(setup: Setup) -> None:
    assert await setup.receiver.mail(mail(image=PNG)) == "stored"
    message = setup.last()
    assert message.channel == "email" and message.key is not None and message.key.startswith("m:")
    assert message.identity.verified and message.identity.email == "ana@example.com"
    assert message.identity.name == "Ana Example"
    assert message.text.startswith("Subject: Order A1001\n\nWhere is my order A1001?")
    assert len(message.images) == 1 and message.images[0].url.startswith("data:image/png;base64,")
    assert message.address["to"] == "ana@example.com" and message.address["message_id"] == "<m1@example.com>"
    assert message.data["raw_bytes"] > 0


@pytest.mark.parametrize(
    ("options", "dmarc", "authserv"),
    [
        ({}, "fail", MX),
        ({}, "pass", "mx.evil.example"),  # someone else's verdict
        ({"trusted_authserv_id": None}, "pass", MX),  # nobody is trusted
        ({}, None, MX),
    ],
)
async def test_unverified_senders(options: dict[str, Any], dmarc: str | None, authserv: str) -> None:
    setup = make(**options)
    await setup.receiver.mail(mail(dmarc=dmarc, authserv=authserv))
    identity = setup.last().identity
    assert not identity.verified and identity.email == "ana@example.com"


async def test_replies_go_to_from_never_to_reply_to(setup: Setup) -> None:
    await setup.receiver.mail(mail(headers={"Reply-To": "mallory@evil.example"}))
    assert setup.last().address["to"] == "ana@example.com"


async def test_a_reply_continues_the_thread_by_its_references(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    first = setup.last()
    await setup.receiver.mail(mail("Thanks!", subject="Re: Order A1001", message_id="<m2@example.com>",
                                   in_reply_to="<m1@example.com>", references="<m1@example.com>"))  # fmt: skip
    second = setup.last()
    assert second.key == first.key and second.text == "Thanks!"  # no subject line within a thread
    assert second.address["references"] == ["<m1@example.com>", "<m2@example.com>"]
    assert second.address["tag"] == first.address["tag"]


async def test_a_reply_to_our_own_mail_continues_the_thread(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    first = setup.last()
    thread = await setup.keeper.thread_of("<m1@example.com>")
    assert thread is not None
    await setup.keeper.remember("<sb.1@acme.example>", thread)  # as deliver does for the bot's reply
    await setup.receiver.mail(mail("Thanks!", message_id="<m2@example.com>", in_reply_to="<sb.1@acme.example>"))
    assert setup.last().key == first.key


async def test_someone_elses_reply_starts_a_conversation_of_their_own(setup: Setup) -> None:
    # Ana forwarded our reply to Bob, who answers it: Bob must not read or join Ana's conversation.
    await setup.receiver.mail(mail())
    first = setup.last()
    await setup.receiver.mail(mail("Hi, Bob here", sender="bob@example.org", message_id="<b1@example.org>",
                                   in_reply_to="<m1@example.com>", references="<m1@example.com>",
                                   subject=f"Re: Order A1001 [#{first.address['tag']}]"))  # fmt: skip
    bob = setup.last()
    assert bob.key != first.key and bob.address["to"] == "bob@example.org"
    assert bob.address["tag"] != first.address["tag"]


async def test_a_thread_is_not_joined_by_a_sender_verified_otherwise(setup: Setup) -> None:
    # Ana's thread is verified; a mail claiming to be Ana that fails DMARC does not join it.
    await setup.receiver.mail(mail())
    first = setup.last()
    await setup.receiver.mail(mail("Send the address of A1001", dmarc="fail", message_id="<f1@example.com>",
                                   in_reply_to="<m1@example.com>"))  # fmt: skip
    forged = setup.last()
    assert forged.key != first.key and not forged.identity.verified


async def test_the_subject_tag_and_the_reply_address_join_only_the_threads_own_sender(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    first = setup.last()
    tag = first.address["tag"]
    await setup.receiver.mail(mail("More", subject=f"Re: Order A1001 [#{tag}]", message_id="<m2@example.com>"))
    assert setup.last().key == first.key
    plus = mail(
        "Again", message_id="<m3@example.com>", subject="New subject", headers={"Cc": f"help+{tag}@acme.example"}
    )
    await setup.receiver.mail(plus)
    assert setup.last().key == first.key


async def test_the_same_subject_alone_never_joins_a_conversation(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    first = setup.last()
    await setup.receiver.mail(mail("Where is mine?", message_id="<m2@example.com>"))  # same sender, same subject
    assert setup.last().key != first.key


async def test_the_same_message_id_twice_is_stored_once(setup: Setup) -> None:
    assert await setup.receiver.mail(mail()) == "stored"
    assert await setup.receiver.mail(mail()) == "stored"  # recognised: flag it, answer nothing
    assert len(setup.intake.messages) == 1


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("ana@example.com", {"Auto-Submitted": "auto-replied"}),
        ("ana@example.com", {"Precedence": "bulk"}),
        ("ana@example.com", {"List-Id": "<news.example.com>"}),
        ("mailer-daemon@example.com", {}),
        ("noreply@shop.example", {}),
        ("help@acme.example", {}),  # our own mail came back
    ],
)
async def test_automatic_mail_is_skipped(setup: Setup, sender: str, headers: dict[str, str]) -> None:
    assert await setup.receiver.mail(mail(sender=sender, headers=headers)) == "skipped"
    assert setup.intake.messages == {}


async def test_a_storage_failure_raises_so_the_mail_stays_unread(setup: Setup) -> None:
    setup.intake.fail_with = StorageError("the database is away")
    with pytest.raises(StorageError):
        await setup.receiver.mail(mail())
    setup.intake.fail_with = None
    assert await setup.receiver.mail(mail()) == "stored"


async def test_the_turn_remembers_which_mail_it_answers(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    assert await setup.keeper.turn(1) == {"message_id": "<m1@example.com>", "references": ["<m1@example.com>"]}


async def test_a_cut_mail_and_unread_attachments_are_said(setup: Setup) -> None:
    message = EmailMessage()
    message["From"] = "ana@example.com"
    message["Subject"] = "Invoice"
    message["Message-ID"] = "<inv@example.com>"
    message.set_content("See the invoice.")
    message.add_attachment(b"%PDF-1.4 ...", maintype="application", subtype="pdf", filename="invoice.pdf")
    await setup.receiver.mail(message.as_bytes(), truncated=True)
    text = setup.last().text
    assert "invoice.pdf" in text and "only its beginning was read" in text


async def test_a_mail_the_code_cannot_handle_is_left_for_a_person_not_retried_forever(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.email.receive as receive

    def broken(raw: bytes, **options: Any) -> Any:
        raise ValueError("a bug")

    monkeypatch.setattr(receive, "parse_mail", broken)
    assert await setup.receiver.mail(mail()) == "skipped"
    assert setup.intake.messages == {}


async def test_a_mail_read_again_keeps_its_thread_and_tag(setup: Setup) -> None:
    # As after a crash between storing a mail and binding its thread: the binding is made when it is read again.
    await setup.receiver.mail(mail())
    first = setup.last()
    setup.state.clear()
    assert await setup.receiver.mail(mail()) == "stored"
    thread = await setup.keeper.thread_of("<m1@example.com>")
    assert thread is not None and thread.key == first.key and thread.tag == first.address["tag"]
    assert await setup.keeper.thread_of_tag(first.address["tag"]) == thread


async def test_another_sender_reusing_a_message_id_is_a_mail_of_its_own(setup: Setup) -> None:
    await setup.receiver.mail(mail())
    first = setup.last()
    await setup.receiver.mail(mail("Hello", sender="bob@example.org"))  # the same Message-ID
    bob = setup.last()
    assert len(setup.intake.messages) == 2 and bob.key != first.key
    thread = await setup.keeper.thread_of("<m1@example.com>")
    assert thread is not None and thread.sender == "ana@example.com"  # still Ana's
