"""Errors a user can cause, shared by every layer: each message says what is wrong and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """Input a user can fix (bad box, wrong dimensionality, empty image); the message says how."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""
