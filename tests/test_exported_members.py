from __future__ import annotations

import pytest

import supportbot


def test_all_is_complete_without_duplicates() -> None:
    # its order is ruff's (RUF022, isort-style), checked by the linter
    assert len(set(supportbot.__all__)) == len(supportbot.__all__)
    for name in supportbot.__all__:
        assert hasattr(supportbot, name), name


def test_the_lazy_names_are_exactly_the_exported_ones() -> None:
    assert set(supportbot._LAZY) == set(supportbot.__all__) - {"__version__"}
    assert set(supportbot.__all__) <= set(dir(supportbot))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'tol'"):
        _ = supportbot.tol  # type: ignore[attr-defined]
