"""Exceptions shared across the package: each names what was wrong."""

from __future__ import annotations


class PromptrunError(Exception):
    """Base class for errors this package raises on purpose."""


class ConfigError(PromptrunError):
    """A missing or invalid setting; the message names the environment variable."""


class InputError(PromptrunError):
    """Bad input (an event, a message body, a catalogue file); the message names the field."""
