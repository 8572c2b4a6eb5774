"""Every error and warning Tastebud raises, rooted at :class:`TastebudError`.

Each error carries a message a user can act on: what is wrong, where, and what was expected.
The CLI prints it as one line; the HTTP API turns it into a JSON body with a status code.
"""

from __future__ import annotations


class TastebudError(Exception):
    """Base class of every error Tastebud raises on purpose."""

    #: HTTP status the API uses for this error.
    status_code: int = 500
    #: short machine-readable error kind for JSON bodies.
    code: str = "error"


class ConfigError(TastebudError):
    """Settings or a configuration file are invalid."""

    status_code = 500
    code = "config_error"


class DataValidationError(TastebudError):
    """Input data is malformed: names the file, the line or column and what was expected."""

    status_code = 422
    code = "invalid_data"


class DatasetNotFoundError(TastebudError):
    """A dataset name or path does not resolve to anything readable."""

    status_code = 404
    code = "dataset_not_found"


class FetchError(TastebudError):
    """A dataset could not be downloaded or verified."""

    status_code = 502
    code = "fetch_failed"


class SplitError(TastebudError):
    """A split cannot be made with the given parameters."""

    status_code = 422
    code = "invalid_split"


class ParameterError(TastebudError):
    """A model or command parameter is out of range or unknown."""

    status_code = 422
    code = "invalid_parameter"


class NotFittedError(TastebudError):
    """A model was used before ``fit``."""

    status_code = 503
    code = "not_fitted"


class UnknownUserError(TastebudError, KeyError):
    """A user id the model has never seen."""

    status_code = 404
    code = "unknown_user"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownItemError(TastebudError, KeyError):
    """An item id the model has never seen."""

    status_code = 404
    code = "unknown_item"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BundleError(TastebudError):
    """A model bundle is missing, corrupt or incompatible."""

    status_code = 500
    code = "bad_bundle"


class StoreError(TastebudError):
    """The event store or request log cannot be reached or refused a write; names the URL, never its password."""

    status_code = 503
    code = "store_unavailable"


class DataWarning(UserWarning):
    """Input was converted or repaired silently enough that the user should know."""


class RegistryError(TastebudError):
    """A registered model, version or alias does not exist, or the registry refused an operation."""

    status_code = 404
    code = "registry_error"


class StreamError(TastebudError):
    """The event stream (Kafka broker or topic) cannot be reached or refuses a request."""

    status_code = 503
    code = "stream_unavailable"


class LockError(TastebudError):
    """A single-flight lock is held by someone else, or its holder lost its lease while working."""

    status_code = 409
    code = "lock_conflict"


class ExperimentError(TastebudError):
    """An experiment definition is invalid, or a lifecycle change (create, start, stop) was refused; says why."""

    status_code = 422
    code = "experiment_error"
