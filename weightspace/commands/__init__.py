"""Subcommands of the ``weightspace`` CLI, one module each."""
