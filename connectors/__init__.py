"""Channel connectors (web widget, Slack, email). They import ``supportbot``; the engine never imports them.

None is built yet: the web widget comes with issue #3, Slack and email after it.
"""
