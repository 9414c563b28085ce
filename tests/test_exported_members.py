from __future__ import annotations

import supportbot


def test_all_is_complete_without_duplicates() -> None:
    # its order is ruff's (RUF022, isort-style), checked by the linter
    assert len(set(supportbot.__all__)) == len(supportbot.__all__)
    for name in supportbot.__all__:
        assert hasattr(supportbot, name), name


def test_public_names_are_exported() -> None:
    public = {n for n in vars(supportbot) if not n.startswith("_") and n != "annotations"}
    modules = {n for n, v in vars(supportbot).items() if type(v).__name__ == "module"}
    assert public - modules == set(supportbot.__all__) - {"__version__"}
