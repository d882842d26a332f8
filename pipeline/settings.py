"""bonescan settings: one pydantic-settings model read from ``BONESCAN_*`` variables and ``.env``.

Read once per process by :func:`get_settings` at an entry point (CLI callback, listener main,
Celery app factory) and passed down as plain arguments; importing a module never reads the
environment. Every variable is listed, with its default, in the README.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

ENV_PREFIX = "BONESCAN_"
NESTED_DELIMITER = "__"

Port = Annotated[int, Field(ge=1, le=65535)]


def validate_ae_title(value: str) -> str:
    """Check an Application Entity title against PS3.5 6.2 (AE VR) and return it stripped.

    Raises
    ------
    ValueError
        If the title is empty, longer than 16 characters, or holds a backslash or a control
        character.
    """
    title = value.strip()
    if not title:
        raise ValueError("AE title must not be empty")
    if len(title) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    if "\\" in title or any(ord(char) < 0x20 or ord(char) > 0x7E for char in title):
        raise ValueError(f"AE title {title!r} may hold only printable ASCII without backslash")
    return title


def _validate_host(value: str) -> str:
    host = value.strip()
    if not host:
        raise ValueError("host must not be empty")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels
        ):
            raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
    return host


class Destination(BaseModel):
    """A DICOM peer that receives the SEG (and SR) results over C-STORE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    ae_title: str
    host: str
    port: Port
    # After a successful C-STORE, C-FIND the SOP Instance UID back (skipped when the peer
    # does not accept Study Root C-FIND).
    verify: bool = True

    _check_ae_title = field_validator("ae_title")(validate_ae_title)
    _check_host = field_validator("host")(_validate_host)


class ListenerSettings(BaseModel):
    """The DICOM C-STORE listener (``bonescan listen``)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = "BONESCAN"
    host: str = "127.0.0.1"
    port: Port = 11112
    # Comma-separated in the environment; empty means any calling AE title is accepted.
    allowed_calling_ae_titles: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_associations: int = Field(default=10, ge=1, le=1000)
    # 0 = no limit; FACTS.md: +20-30 % throughput against pynetdicom's 16 kB default.
    max_pdu_size: int = Field(default=0, ge=0)
    # Fallback for series that are neither a 2-frame whole-body scan nor a pair of views.
    quiet_seconds: float = Field(default=30.0, gt=0)
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificate: Path | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # SIGTERM: stop accepting, then wait at most this long for running associations.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Processes that serve associations on the port (listeners/workers.py): 1 files every
    # C-STORE in the listener process; more use more cores when many associations arrive at
    # once (README "The listener").
    processes: int = Field(default=1, ge=1, le=64)

    _check_ae_title = field_validator("ae_title")(validate_ae_title)
    _check_host = field_validator("host")(_validate_host)

    @field_validator("allowed_calling_ae_titles", mode="before")
    @classmethod
    def _split_titles(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in (piece.strip() for piece in value.split(",")) if part]
        return value

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_titles(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(title) for title in value]

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenerSettings:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("tls_certificate and tls_private_key must be set together")
        return self


class WorkerSettings(BaseModel):
    """The Celery workers (``bonescan worker``)."""

    model_config = ConfigDict(extra="forbid")

    # Prefork pool processes per worker (the model is loaded once in each).
    concurrency: int = Field(default=1, ge=1, le=64)
    # A job's database lease; a dead worker's job may be taken over after it expires.
    lease_seconds: float = Field(default=600.0, gt=0)
    # Redis redelivers an unacknowledged task after this long (FACTS.md: must exceed the longest
    # task, or a job runs twice at once; the lease makes a second run a no-op anyway).
    visibility_timeout_seconds: float = Field(default=3600.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)


class ExportSettings(BaseModel):
    """Delivery of SEG and SR objects to the destinations."""

    model_config = ConfigDict(extra="forbid")

    # Attempts per object and destination before the export is failed (transient errors only).
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Exponential backoff: base × 2^(attempt − 1), at most max.
    backoff_base_seconds: float = Field(default=5.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)
    # DICOM network timeouts (association, DIMSE, socket) for C-STORE and C-FIND.
    timeout_seconds: float = Field(default=30.0, gt=0)


class ReviewSettings(BaseModel):
    """The review page (``bonescan review-server``; also started by ``serve`` when
    ``review_password_hash`` is set)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: Port = 8080
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    _check_host = field_validator("host")(_validate_host)


class Settings(BaseSettings):
    """Every bonescan setting; see the README for the variable names and defaults."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Path("./bonescan-data")
    database_url: str = ""
    broker_url: str | None = None
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    destinations: Annotated[list[Destination], NoDecode] = Field(default_factory=list)
    weights: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "text", "json"] = "auto"
    # scrypt$<n>$<r>$<p>$<salt>$<hash> (pipeline.review_web.auth); unset: no review page.
    review_password_hash: SecretStr | None = None

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return []
            try:
                return json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"not valid JSON ({error.msg} at character {error.pos}); expected a list "
                    'like [{"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}]'
                ) from None
        return value

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [destination.name for destination in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _empty_broker_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'bonescan.db').as_posix()}"
        return self

    @property
    def spool_dir(self) -> Path:
        """Where the listener keeps received instances exactly as they arrived."""
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        """Where SEG, SR and preview files are written."""
        return self.data_dir / "results"

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; ``KeyError`` names the known ones otherwise."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise KeyError(f"no destination named {name!r} (known: {known})")


class InvalidSettingsError(Exception):
    """The environment holds a bad value; ``str()`` is one line that names the variable."""


def env_variable(location: tuple[int | str, ...]) -> str:
    """The variable for a pydantic error location: ``BONESCAN_LISTENER__PORT``, or
    ``BONESCAN_DESTINATIONS[0].host`` for a field inside a JSON list item."""
    names: list[str] = []
    for index, part in enumerate(location):
        if isinstance(part, int):
            inner = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location[index:])
            return ENV_PREFIX + NESTED_DELIMITER.join(names) + inner
        names.append(part.upper())
    return ENV_PREFIX + NESTED_DELIMITER.join(names) if names else ENV_PREFIX + "*"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    given = first.get("input")
    shown = "" if isinstance(given, (dict, list)) or given is None else f" (got {given!r})"
    return f"{env_variable(tuple(first['loc']))}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise :class:`InvalidSettingsError` (one line) if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise InvalidSettingsError(_describe(error)) from None
    except SettingsError as error:
        raise InvalidSettingsError(f"settings: {error}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once at an entry point."""
    return load_settings()
