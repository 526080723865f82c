"""User-facing errors. The CLI turns each into one line on stderr and an exit code.

- :class:`VitshrinkError` and subclasses: bad input (spec, checkpoint, model name, files). Exit 2.
- :class:`VerificationError`: the compiled result broke a promise (exactness, export). Exit 1.
- :class:`GateError`: the result is correct but a deployment gate (``vitshrink check``) failed. Exit 3.
"""
from __future__ import annotations


class VitshrinkError(Exception):
    """Bad input: the message names the offending key, shape or file."""

    exit_code = 2


class SpecError(VitshrinkError):
    """A mask spec that cannot apply to the model. ``key`` is the canonical mask or setting name."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"spec key '{key}': {message}")


class CheckpointError(VitshrinkError):
    """A checkpoint that cannot be read or does not match the model."""


class ModelError(VitshrinkError):
    """An unknown model name or a model option the frontend cannot represent."""


class VerificationError(VitshrinkError):
    """Exactness or export verification failed: the compiled model is not what was promised."""

    exit_code = 1


class GateError(VitshrinkError):
    """A gate threshold failed (accuracy, speed-up, regression vs a baseline...). Exit 3."""

    exit_code = 3
