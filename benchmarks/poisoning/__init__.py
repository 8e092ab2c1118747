"""Poisoned site payloads against the server's screening (issue 13.4); see ``__main__`` for the command."""
