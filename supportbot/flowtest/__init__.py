"""Flow tests: YAML cases run offline and deterministically against a project's flows and tools.

``supportbot test`` is the command; these modules are its parts:

- ``spec``: the file format (``TestFile``, whose JSON Schema ``supportbot schema test`` prints);
- ``load``: finding test files and reporting every problem at once, as ``file:line: key: problem; fix``;
- ``scripted``: the model of a test (``model:`` scripts, else the demo model, or the real one with ``--live``);
- ``run`` and ``converse``: a fresh database per case, the engine, the record of each turn;
- ``assertions``: ``expect:``;
- ``report``: progress lines, failures with a diff and the transcript, the summary, JUnit XML.
"""

from __future__ import annotations

from supportbot.flowtest.spec import TestFile

__all__ = ["TestFile"]
