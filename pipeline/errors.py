"""Errors keyed on what the caller must do (STYLE.md "Errors")."""

from __future__ import annotations


class RetryableError(Exception):
    """Worth trying again later: peer down, timeout, DIMSE 0xA7xx, database unavailable."""


class PermanentError(Exception):
    """Will fail the same way again: bad input, rejected SOP class, configuration.

    A task fails its job at once with this message, stored for the CLI.
    """
