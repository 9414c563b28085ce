from __future__ import annotations

import pytest

from supportbot.tools.docstring import Docstring, parse_docstring

GOOGLE = """Look up an order.

    Shows status and delivery date.

    Args:
        order_id: The order number,
            e.g. A1001.
        verbose (bool): Show everything.
        quiet:

    Returns:
        The order.

    Raises:
        KeyError: never.
    """

SPHINX = """Look up an order.

    :param order_id: The order number,
        e.g. A1001.
    :param bool verbose: Show everything.
    :type order_id: str
    :returns: The order.
    :rtype: dict
    """

NUMPY = """Look up an order.

    Parameters
    ----------
    order_id : str
        The order number,
        e.g. A1001.
    verbose, loud : bool
        Show everything.

    Returns
    -------
    dict
        The order.
    """


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            GOOGLE,
            Docstring(
                description="Look up an order.\n\nShows status and delivery date.",
                params={"order_id": "The order number, e.g. A1001.", "verbose": "Show everything."},
            ),
            id="google",
        ),
        pytest.param(
            SPHINX,
            Docstring(
                description="Look up an order.",
                params={"order_id": "The order number, e.g. A1001.", "verbose": "Show everything."},
            ),
            id="sphinx",
        ),
        pytest.param(
            NUMPY,
            Docstring(
                description="Look up an order.",
                params={
                    "order_id": "The order number, e.g. A1001.",
                    "verbose": "Show everything.",
                    "loud": "Show everything.",
                },
            ),
            id="numpy",
        ),
        pytest.param(None, Docstring(), id="none"),
        pytest.param("   ", Docstring(), id="blank"),
        pytest.param("Just a summary.", Docstring(description="Just a summary."), id="summary-only"),
        pytest.param(
            "Do it.\n\nExample:\n    do_it()\n\nArguments:\n    x: the x\n",
            Docstring(description="Do it.\n\nExample:\n    do_it()", params={"x": "the x"}),
            id="other-sections-kept",
        ),
        pytest.param(
            "Do it.\n\nArgs:\n    *items: the items\n    **options: the options\n",
            Docstring(description="Do it.", params={"items": "the items", "options": "the options"}),
            id="starred-names",
        ),
        pytest.param(
            "Ratio: 3 to 1 is the rule.\n:note that this line is prose",
            Docstring(description="Ratio: 3 to 1 is the rule.\n:note that this line is prose"),
            id="colons-in-prose",
        ),
    ],
)
def test_parse_docstring(doc: str | None, expected: Docstring) -> None:
    assert parse_docstring(doc) == expected
