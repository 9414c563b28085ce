"""``fast_init`` against the ``__init__`` that ``dataclasses`` writes: the same objects, the same errors."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import InitVar, dataclass, field
from typing import Any

import pytest

from supportbot._frozen import fast_init
from supportbot.events import TurnFinished
from supportbot.messages import ChatMessage, Usage
from supportbot.store.base import StoredMessage

made: list[str] = []


def _pair() -> tuple[type[Any], type[Any]]:
    """The same class twice, the second with ``fast_init``."""

    def build() -> type[Any]:
        @dataclass(frozen=True, kw_only=True, slots=True)
        class Base:
            name: str
            tags: tuple[str, ...] = ()
            extra: dict[str, Any] = field(default_factory=dict)

        @dataclass(frozen=True, kw_only=True, slots=True)
        class Child(Base):
            count: int = 0
            items: list[int] = field(default_factory=list)

            def __post_init__(self) -> None:
                made.append(self.name)

        return Child

    return build(), fast_init(build())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "a"},
        {"name": "a", "tags": ("x",), "extra": {"k": 1}, "count": 3, "items": [1]},
        {"name": "a", "items": []},
    ],
)
def test_the_same_object_as_the_dataclass_init(kwargs: dict[str, Any]) -> None:
    plain, fast = _pair()
    made.clear()
    a, b = plain(**kwargs), fast(**kwargs)
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert made == ["a", "a"]  # __post_init__ ran for both


def test_each_default_factory_makes_a_new_value() -> None:
    _, fast = _pair()
    one, two = fast(name="a"), fast(name="b")
    assert one.extra == {} and one.extra is not two.extra and one.items is not two.items


def test_the_same_errors() -> None:
    plain, fast = _pair()
    for cls in (plain, fast):
        with pytest.raises(TypeError, match="name"):
            cls()
        with pytest.raises(TypeError, match="colour"):
            cls(name="a", colour="red")
        with pytest.raises(TypeError):
            cls("a")  # keyword-only
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls(name="a").name = "b"


def test_the_same_parameters() -> None:
    plain, fast = _pair()
    ours, theirs = inspect.signature(fast.__init__).parameters, inspect.signature(plain.__init__).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()]
    assert ours["tags"].default == () and ours["count"].default == 0


@pytest.mark.parametrize("cls", [Usage, ChatMessage, StoredMessage, TurnFinished])
def test_the_hot_classes_have_it(cls: type[Any]) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert "_set0" in cls.__init__.__code__.co_names or "_set0" in cls.__init__.__globals__


def test_only_frozen_slotted_dataclasses() -> None:
    @dataclass(kw_only=True, slots=True)
    class Mutable:
        x: int

    with pytest.raises(TypeError, match="frozen"):
        fast_init(Mutable)

    @dataclass(frozen=True, kw_only=True, slots=True)
    class Hidden:
        x: int = 0
        y: int = field(default=0, init=False)

    with pytest.raises(TypeError, match="'y'"):
        fast_init(Hidden)

    @dataclass(frozen=True, kw_only=True, slots=True, init=False)
    class NoInit:
        x: int = 0

    with pytest.raises(TypeError, match="frozen"):
        fast_init(NoInit)

    @dataclass(frozen=True, kw_only=True, slots=True)
    class OwnInit:
        x: int = 0

        def __init__(self, value: int) -> None:
            object.__setattr__(self, "x", value)

    with pytest.raises(TypeError, match="of its own"):
        fast_init(OwnInit)

    @dataclass(frozen=True, kw_only=True, slots=True)
    class WithInitVar:
        x: int = 0
        scale: InitVar[int] = 1

        def __post_init__(self, scale: int) -> None:
            object.__setattr__(self, "x", self.x * scale)

    with pytest.raises(TypeError, match="InitVar fields \\(scale\\)"):
        fast_init(WithInitVar)
