"""One error hierarchy for the whole project.

Every error derives from :class:`DeltaStoreError` and also from the matching
built-in exception, so callers can catch either (the zarr-python habit).
Messages say what was expected and what came.
"""

from __future__ import annotations

__all__ = [
    "DeltaStoreError",
    "InvalidArgumentError",
    "InvalidPlanError",
    "StoreExistsError",
    "StoreNotFoundError",
    "EmptyStoreError",
    "FormatVersionError",
    "CorruptStoreError",
    "ModelMismatchError",
    "FingerprintMismatchError",
    "SampleIdTypeError",
    "MissingSampleIdsError",
    "UnknownSampleIdsError",
    "RecorderClosedError",
    "DeviceError",
    "LedgerError",
    "StoreLockedError",
    "CommitConflictError",
    "RecordingFailedError",
    "EncryptionKeyError",
    "StepErasedError",
]


class DeltaStoreError(Exception):
    """Base of every error raised by deltastore and unlearning."""


class InvalidArgumentError(DeltaStoreError, ValueError):
    """An argument is out of its documented range or of the wrong kind."""


class InvalidPlanError(InvalidArgumentError):
    """A pruning plan is malformed (rate outside [0, 1), unknown mode, ...)."""


class StoreExistsError(DeltaStoreError, FileExistsError):
    """Creating a store where one (or any file) already exists: never overwritten silently."""


class StoreNotFoundError(DeltaStoreError, FileNotFoundError):
    """No deltastore store at the given path."""


class EmptyStoreError(DeltaStoreError, ValueError):
    """A store with no committed step where steps are needed."""


class FormatVersionError(DeltaStoreError, ValueError):
    """The store was written by a newer (or unknown) format version."""


class CorruptStoreError(DeltaStoreError, OSError):
    """Stored bytes fail their checksum or disagree with the manifest.

    ``step`` and ``tensor`` name the damaged place when known.
    """

    def __init__(self, message: str, *, step: int | None = None, tensor: str | None = None):
        super().__init__(message)
        self.step = step
        self.tensor = tensor

    def __reduce__(self):  # keep step/tensor through multiprocessing
        return (_rebuild_corrupt, (str(self), self.step, self.tensor))


def _rebuild_corrupt(message, step, tensor):
    return CorruptStoreError(message, step=step, tensor=tensor)


class ModelMismatchError(DeltaStoreError, ValueError):
    """A model's parameters (names, shapes, dtypes) do not match the store."""


class FingerprintMismatchError(ModelMismatchError):
    """The model is not in the state the store (or its ledger) expects."""


class SampleIdTypeError(DeltaStoreError, TypeError):
    """Sample ids of the wrong type for this store (integer vs string)."""


class MissingSampleIdsError(DeltaStoreError, ValueError):
    """A recorded step came without the ids of the samples it used."""


class UnknownSampleIdsError(DeltaStoreError, KeyError):
    """Sample ids that the index has never seen; ``ids`` lists them."""

    def __init__(self, message: str, *, ids=()):
        super().__init__(message)
        self.ids = list(ids)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class RecorderClosedError(DeltaStoreError, RuntimeError):
    """A recorder or writer used after close()."""


class DeviceError(DeltaStoreError, ValueError):
    """A device that does not exist or is not available here."""


class LedgerError(DeltaStoreError, ValueError):
    """A ledger operation that cannot be done (unknown request, already restored, ...)."""


class StoreLockedError(DeltaStoreError, TimeoutError):
    """Another process holds the store's lock for longer than allowed."""


class CommitConflictError(StoreLockedError):
    """Another writer replaced the commit record since this one last read it (object
    storage's compare-and-swap failed): this writer stops, the other's commit stands."""


class RecordingFailedError(DeltaStoreError, OSError):
    """Committing recorded steps failed (disk full, file too large, permission, ...).

    Nothing past the failure is committed; every step before it stays readable, and
    the store reopens with ``mode="a"``. ``committed_steps`` says where it stands.
    """

    def __init__(self, message: str, *, committed_steps: int | None = None):
        super().__init__(message)
        self.committed_steps = committed_steps

    def __reduce__(self):
        return (_rebuild_recording_failed, (str(self), self.committed_steps))


def _rebuild_recording_failed(message, committed_steps):
    return RecordingFailedError(message, committed_steps=committed_steps)


class EncryptionKeyError(DeltaStoreError, PermissionError):
    """An encrypted store opened without its key, or with another key (or a key given to a
    store that is not encrypted). ``key_id`` is the id of the key the store needs (never the key)."""

    def __init__(self, message: str, *, key_id: str | None = None):
        super().__init__(message)
        self.key_id = key_id

    def __reduce__(self):
        return (_rebuild_encryption_key, (str(self), self.key_id))


def _rebuild_encryption_key(message, key_id):
    return EncryptionKeyError(message, key_id=key_id)


class StepErasedError(DeltaStoreError, LookupError):
    """A step whose stored update was erased for good (its data key shredded, or purged):
    it can never be read again. ``steps`` lists the erased steps asked for."""

    def __init__(self, message: str, *, steps=()):
        super().__init__(message)
        self.steps = list(steps)

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return str(self.args[0])

    def __reduce__(self):
        return (_rebuild_step_erased, (str(self), self.steps))


def _rebuild_step_erased(message, steps):
    return StepErasedError(message, steps=steps)
