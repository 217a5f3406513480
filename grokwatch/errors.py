"""One error hierarchy: every message is one line that names the file and the fix."""

from __future__ import annotations


class GrokwatchError(Exception):
    """Base for errors shown to the user as one line (exit code 1)."""


class UsageError(GrokwatchError):
    """Bad command-line usage or settings (exit code 2)."""


class ConfigError(UsageError):
    """A config file or environment variable that cannot be used."""


class ProbeError(GrokwatchError):
    """A probe file that is missing, empty or malformed."""


class CheckpointError(GrokwatchError):
    """A checkpoint that cannot be evaluated (incomplete, corrupt, vanished)."""


class CheckpointVanished(CheckpointError):
    """The checkpoint directory disappeared before or during evaluation."""


class ModelError(GrokwatchError):
    """A model that grokwatch cannot probe (no MoE layer, unknown architecture)."""


class StoreError(GrokwatchError):
    """A store that cannot be opened or is locked by another daemon."""
