"""The one error family raised by maml-tune's library code.

Library code raises these; only the CLI turns them into a one-line message and an exit
code. Nothing here imports torch, optuna, typer or rich.
"""

from __future__ import annotations


class MamlTuneError(Exception):
    """Base of every error maml-tune raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(MamlTuneError):
    """A configuration, option, spec or override is invalid (the message names key and expectation)."""

    exit_code = 2


class FamilyError(MamlTuneError):
    """A task family is unknown, broken, or produced data that violates the contract."""


class PluginError(FamilyError):
    """A plugin could not be discovered or loaded; the message names the plugin and its source."""


class DataError(MamlTuneError):
    """A data set is missing, incomplete or unreadable."""


class DivergenceError(MamlTuneError):
    """Meta-training produced a non-finite loss or gradient and was stopped."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration


class CheckpointError(MamlTuneError):
    """A checkpoint is missing, corrupt, tampered with, or cannot be written."""


class DeviceError(MamlTuneError):
    """The requested device is not available on this machine."""


class StorageError(MamlTuneError):
    """The study database cannot be reached or used."""


class Interrupted(MamlTuneError):
    """The user stopped the work (Ctrl-C, SIGTERM); the message says what was kept. Its exit
    code, 128 + SIGINT as shells report it, is every interrupted command's."""

    exit_code = 130


class StudyError(MamlTuneError):
    """A study is unknown, incompatible with the spec, or has no usable trials."""
