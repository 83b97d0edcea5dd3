"""Configuration: CLI flags (--kebab-case) over SHOVEL_* environment variables over defaults.

Validation only; no I/O happens here.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict, SettingsError

from shovel.redact import redact
from shovel.sources import FollowConfig, SourceOptions, SourceSpec, parse_source
from shovel.sources.generator import DEFAULT_GENERATE_RATE
from shovel.storage import StorageConfig

ENV_PREFIX = "SHOVEL_"
MiB = 1024 * 1024
# Byte counts go to the native client as unsigned 64-bit integers.
U64_MAX = 2**64 - 1
# The drain deadline must end this long before the orchestrator's SIGKILL.
GRACE_MARGIN_S = 5.0


class ConfigError(Exception):
    """Bad usage or configuration, as one line for the user (exit code 2)."""


class Settings(BaseSettings):
    """shovel moves newline-delimited records from a source into durable storage under
    OUTPUT_DIR/segments, and never loses a record when it is stopped: on SIGTERM or Ctrl-C it
    stops reading, stores everything it has read, fsyncs, commits the source offset, and exits.
    Run it again on the same source and output to resume where it stopped.

    A file is resumed only if it is the same file (device, inode and a fingerprint of its first
    bytes, kept in the checkpoint); a replaced or truncated file is refused, or with --follow
    read through its rotation. A stream (stdin, a FIFO) is never re-read: each run appends what
    it reads; a graceful stop stores all of it, but a SIGKILL loses what was read and not yet
    committed, and nothing can say how much.

    Stop signals: SIGTERM, SIGINT and SIGHUP (unless started with it ignored, as by nohup)
    stop shovel cleanly; a second one stops waiting for the queue.

    Exit codes: 0 everything read is durable; 1 fatal runtime error (storage failure, output
    directory in use or damaged, a source that does not continue what was stored); 2 bad usage
    or configuration; 3 stopped by the deadline or a second signal with records read but not
    stored (their number is logged).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_prog_name="python -m shovel",
        cli_kebab_case=True,
        cli_exit_on_error=False,
        cli_implicit_flags=True,
        extra="forbid",
    )

    source: str = Field(
        "generate",
        description="where records come from: a file path (or file:PATH); '-' for stdin; "
        "'generate' for endless deterministic records; 'generate:N' for exactly N; "
        "'nats://HOST[:PORT][,HOST...]/STREAM?consumer=NAME[&subject=F&batch=N&creds=PATH"
        "&ack_wait_s=S&max_ack_pending=N]' for a NATS JetStream stream through a durable pull "
        "consumer that replicas share (each message acknowledged once durable). "
        "A named pipe works too; start its writer first.",
    )
    output_dir: Path = Field(
        Path("shovel-data"),
        description="directory for segments/, the checkpoint and the lock (created if missing)",
    )
    follow: bool = Field(
        False,
        description="keep reading a file as it grows, like tail -F, through rotation by "
        "rename + create and by copy + truncate, until stopped; an unfinished last line waits "
        "for its newline. What is followed is the path named (links followed to where they "
        "lead) and the files rotated from it (NAME.1, NAME-20261202, STEM-2026-12-02.EXT...), "
        "read in order; another path on the same output directory is refused, and so are "
        "files of /proc, /sys, devices and named pipes",
    )
    follow_poll_ms: int = Field(
        200,
        ge=10,
        le=60_000,
        description="with --follow: how often to look for growth or rotation at the end of "
        "the file",
    )
    follow_rotated_quiet_ms: int = Field(
        1000,
        ge=0,
        le=3_600_000,
        description="with --follow: after a rotation, keep reading the old file until it has "
        "had no new data for this long (its writer may not have reopened yet)",
    )
    generate_rate: float | None = Field(
        None,
        ge=0,
        le=1e9,
        allow_inf_nan=False,
        description="generator records per second; 0 means as fast as possible. Unset: "
        f"{DEFAULT_GENERATE_RATE:g}/s for the endless 'generate' (to watch it run), as fast as "
        "possible for 'generate:N'",
    )
    read_chunk_bytes: int = Field(
        1 * MiB, ge=4096, le=256 * MiB, description="bytes per read from a file or stream"
    )
    max_record_bytes: int = Field(
        1 * MiB,
        ge=1,
        le=U64_MAX,
        description="longest record (line without its newline); longer lines are not stored "
        "but kept whole in OUTPUT_DIR/rejected/<offset>.rec",
    )
    queue_max_batches: int = Field(
        8, ge=1, le=10_000, description="batches the reader may queue ahead of storage"
    )
    segment_max_bytes: int = Field(
        256 * MiB,
        ge=1,
        le=U64_MAX,
        description="start a new segment file once the current one holds this",
    )
    fsync_interval_ms: int = Field(
        100, ge=1, le=60_000, description="fsync (and commit) at most this long after a write"
    )
    fsync_max_bytes: int = Field(
        16 * MiB,
        ge=1,
        le=U64_MAX,
        description="fsync (and commit) as soon as this many bytes are unsynced",
    )
    max_inflight_bytes: int = Field(
        32 * MiB,
        ge=1,
        le=U64_MAX,
        description="bytes handed to storage but not yet durable before it pushes back: what "
        "a stop may still have to fsync (at most 4 MiB of it is held in memory, the rest is "
        "written and waits for its fsync)",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="deadline for the whole drain after a stop signal",
    )
    grace_period_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="the orchestrator's kill deadline (Kubernetes terminationGracePeriodSeconds); "
        "when set, shovel refuses a shutdown timeout that does not end "
        f"{GRACE_MARGIN_S:g} s before it",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address (IPv4 or IPv6) for /metrics, /healthz, /readyz"
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="port for metrics; 0 disables them")
    status_interval_s: float = Field(
        5.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="seconds between status log lines; 0 disables them",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="logging level"
    )

    @field_validator("source")
    @classmethod
    def _source_syntax(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("output_dir", mode="before")
    @classmethod
    def _named(cls, value: object) -> object:
        if isinstance(value, str | Path) and not str(value):
            # Path("") is the working directory: the store would land wherever shovel started.
            raise ValueError(
                "is empty: name the directory for segments/, the checkpoint and the lock"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _follow_needs_a_file(self) -> Settings:
        if self.follow and not parse_source(self.source).followable:
            raise ValueError(f"--follow reads a file, and the source is {self.source!r}")
        return self

    @model_validator(mode="after")
    def _fits_grace_period(self) -> Settings:
        grace = self.grace_period_s
        if grace is not None and self.shutdown_timeout_s + GRACE_MARGIN_S > grace:
            raise ValueError(
                f"shutdown timeout {self.shutdown_timeout_s:g} s leaves less than "
                f"{GRACE_MARGIN_S:g} s before the {grace:g} s grace period ends: the kill "
                "would race the drain; lower --shutdown-timeout-s or raise the grace period"
            )
        return self

    @property
    def source_spec(self) -> SourceSpec:
        """The parsed `source`."""
        return parse_source(self.source)

    @property
    def follow_config(self) -> FollowConfig | None:
        """How to follow the file, or None without --follow."""
        if not self.follow:
            return None
        return FollowConfig(
            poll_s=self.follow_poll_ms / 1000, rotated_quiet_s=self.follow_rotated_quiet_ms / 1000
        )

    @property
    def source_options(self) -> SourceOptions:
        """What the source takes from these settings."""
        return SourceOptions(
            chunk_bytes=self.read_chunk_bytes,
            max_record_bytes=self.max_record_bytes,
            generate_rate=self.generate_rate,
            follow=self.follow_config,
            queue_max_batches=self.queue_max_batches,
            shutdown_timeout_s=self.shutdown_timeout_s,
            output_dir=self.output_dir,
        )

    @property
    def storage_config(self) -> StorageConfig:
        """How to open the storage client."""
        return StorageConfig(
            directory=self.output_dir,
            segment_max_bytes=self.segment_max_bytes,
            fsync_interval_ms=self.fsync_interval_ms,
            fsync_max_bytes=self.fsync_max_bytes,
            max_inflight_bytes=self.max_inflight_bytes,
        )


def _document_env_names() -> None:
    # Python 3.11 keeps docstring indentation; the help text should not.
    Settings.__doc__ = inspect.cleandoc(Settings.__doc__ or "")
    # Each option's help names its environment variable, derived here so it cannot drift.
    for name, field in Settings.model_fields.items():
        env = f"{ENV_PREFIX}{name.upper()}"
        if field.description and env not in field.description:
            field.description = f"{field.description} [env: {env}]"


_document_env_names()


def given_as(name: str, argv: list[str]) -> str:
    """How the user set option `name`: its flag when the command line has it, else its
    environment variable as spelled in the environment (the value came from there)."""
    flag = "--" + name.replace("_", "-")
    if any(a == flag or a.startswith(flag + "=") for a in argv):
        return flag
    env = f"{ENV_PREFIX}{name.upper()}"
    return next((k for k in os.environ if k.upper() == env), flag)


def _one_line(err: ValidationError, argv: list[str]) -> str:
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"] if x != "__root__"]
        msg = str(e["msg"]).removeprefix("Value error, ")
        if loc:
            parts.append(f"{given_as(loc[0], argv)}: {msg} (got {e['input']!r})")
        else:
            parts.append(msg)
    return "; ".join(parts)


def load_settings(argv: list[str]) -> Settings:
    """Settings from `argv`, the environment and defaults; raises ConfigError on bad input.
    `--help` prints the help and raises SystemExit(0)."""
    try:
        return CliApp.run(Settings, cli_args=argv)
    except ValidationError as e:
        raise ConfigError(redact(_one_line(e, argv))) from None
    except SettingsError as e:
        raise ConfigError(redact(str(e).removeprefix("error parsing CLI: "))) from None
