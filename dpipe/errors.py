"""One exception tree for everything dpipe reports to users.

Every error subclasses :class:`DpipeError` and the builtin that matches it, so callers can catch
either. Messages follow one shape: where -> what was expected -> what was found -> ``Hint:``.
Messages never contain credentials or ``storage_options`` values.
"""

from __future__ import annotations


class DpipeError(Exception):
    """Base class of all dpipe errors.

    Parameters
    ----------
    message
        What went wrong, naming the field, column or file.
    hint
        How to fix it; printed on its own line after the message.
    """

    #: Exit status of the ``dpipe`` CLI for this kind of error.
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n\nHint: {self.hint}"
        return self.message

    def __reduce__(self):
        # Errors raised inside Dask tasks travel back to the client pickled.
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls, message, hint):
    return cls(message, hint=hint)


class SpecError(DpipeError, ValueError):
    """The job spec (YAML, Python or ``--set`` overrides) is invalid.

    ``problems`` lists every problem found, each as ``(location, message)``.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        problems: list[tuple[str, str]] | None = None,
    ):
        self.problems = problems or []
        super().__init__(message, hint=hint)

    def __reduce__(self):
        return (_rebuild_spec, (self.message, self.hint, self.problems))


def _rebuild_spec(message, hint, problems):
    return SpecError(message, hint=hint, problems=problems)


class ColumnError(DpipeError, KeyError):
    """A column the spec names does not exist in the data's schema, or has the wrong type."""

    exit_code = 2

    # KeyError.__str__ would wrap the message in quotes.
    __str__ = DpipeError.__str__


class ExpressionError(SpecError):
    """An expression in the spec cannot be parsed, uses something not allowed, or fails to apply."""


class StorageError(DpipeError, OSError):
    """A path, bucket or endpoint cannot be read or written (missing, unreachable, denied)."""


class DataError(DpipeError, ValueError):
    """The data cannot be used as asked: corrupt file, empty after filtering, one label class..."""


class TrainingError(DpipeError, RuntimeError):
    """Distributed training failed."""


class ClusterError(DpipeError, ConnectionError):
    """The Dask cluster cannot be started or reached."""


class BundleError(DpipeError, ValueError):
    """A model bundle is missing, incomplete or from an incompatible version."""


class StateError(DpipeError, RuntimeError):
    """An object was used before the step that prepares it: a pipeline before ``fit``, an op
    that reads a table before ``bind``. A bug in the calling code, not in the data."""
