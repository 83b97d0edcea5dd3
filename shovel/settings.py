"""Configuration: CLI flags (--kebab-case) over SHOVEL_* environment variables over a TOML
file (--config) over defaults.

Validation only: the one file read here is the --config file (and, for --version, the
package's metadata).
"""

from __future__ import annotations

import contextvars
import difflib
import importlib.metadata
import inspect
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from shovel.cliparser import HelpFormatter, Parser, placer
from shovel.logs import LogFormat
from shovel.oserrors import reason
from shovel.prescan import env_spelled, flag_given, flag_value
from shovel.redact import redact
from shovel.sizes import HOW, format_size, parse_size
from shovel.sources import FollowConfig, SourceOptions, SourceSpec, parse_source
from shovel.sources.generator import DEFAULT_GENERATE_RATE
from shovel.sources.nats.url import FSYNC_INTERVAL_MS as NATS_FSYNC_INTERVAL_MS
from shovel.sources.nats.url import NatsSpec
from shovel.storage import StorageConfig
from shovel.storage.sinkurl import SinkSpec, parse_sink

ENV_PREFIX = "SHOVEL_"
# The name on the package index; the import package and the command stay `shovel`. Must match
# [project] name in pyproject.toml.
DISTRIBUTION = "shovel-pipeline"
MiB = 1024 * 1024
# Byte counts go to the native client as unsigned 64-bit integers.
U64_MAX = 2**64 - 1
# The drain deadline must end this long before the orchestrator's SIGKILL.
GRACE_MARGIN_S = 5.0

# The --config file of the settings being loaded: load_settings names it, the model's sources
# read it (after the flags, so that --help and --version work whatever it holds).
_CONFIG_FILE: contextvars.ContextVar[_ConfigRead | None] = contextvars.ContextVar(
    "shovel_config_file", default=None
)


def _size(value: object) -> object:
    if isinstance(value, bool):
        # TOML's true is no size, though Python counts it as 1.
        raise ValueError(f"not a size: {HOW}")
    return parse_size(value) if isinstance(value, str) else value


# A byte count: an integer, or a string with a unit (16MiB, 256MB).
Size = Annotated[int, BeforeValidator(_size)]


# --read-chunk-bytes when it is not given and records go to a sink: with 8 batches queued
# (--queue-max-batches), what a stop must still publish stays under a second at the pace
# measured here (bench/run.py sink).
SINK_READ_CHUNK_BYTES = 64 * 1024


class ConfigError(Exception):
    """Bad usage or configuration, as one line for the user (exit code 2)."""


class Settings(BaseSettings):
    """shovel moves newline-delimited records from a source into durable storage under
    OUTPUT_DIR/segments, and never loses a record when it is stopped: on SIGTERM or Ctrl-C it
    stops reading, stores and fsyncs everything it has read, commits the source offset, and
    exits. Run it again on the same source and output to resume where it stopped.

    A file is resumed only if it is the same file (device, inode and a fingerprint of its first
    bytes). A stream (stdin, a FIFO) is never re-read: a clean stop stores all it read, a
    SIGKILL loses what was read and not yet committed.

    Each option is taken from, in this order: its flag, its SHOVEL_* environment variable, the
    --config file, its default. SIZE is bytes or a number with a unit (16MiB, 256MB, 1GiB).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
    )

    # Where each value came from, for error messages (see `given_as`); set by load_settings.
    _argv: list[str] = PrivateAttr(default_factory=list)
    _config: ConfigFile | None = PrivateAttr(default=None)

    source: str = Field(
        "generate",
        description="where records come from: a file path (or file:PATH); - for stdin; "
        "generate for endless deterministic records, generate:N for exactly N; nats://... for "
        "a NATS JetStream stream (see NATS below). A named pipe works too; start its writer "
        "first",
    )
    output_dir: Path = Field(
        Path("shovel-data"),
        description="directory for segments/, the checkpoint and the lock; created if missing",
    )
    sink: str | None = Field(
        None,
        description="where records go instead of OUTPUT_DIR/segments: "
        "nats://HOST/STREAM?subject=SUBJECT, a NATS JetStream stream (see NATS below), which "
        "then holds the committed offset too; --output-dir is then optional and keeps only "
        "last-stop.json and rejected/",
    )
    follow: bool = Field(
        False,
        description="keep reading the file as it grows, like tail -F, and through its rotations "
        "(rename + create, copy + truncate; NAME.1, NAME-20261202... read in order) until "
        "stopped; links are followed at every look. Not for pipes, devices, /proc or /sys",
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
        "had no new data for this long, as its writer may not have reopened yet",
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
    read_chunk_bytes: Size = Field(
        1 * MiB, ge=4096, le=256 * MiB, description="bytes per read from a file or stream"
    )
    max_record_bytes: Size = Field(
        1 * MiB,
        ge=1,
        le=U64_MAX,
        description="longest record (line without its newline); longer lines are not stored "
        "but kept whole in OUTPUT_DIR/rejected/<offset>.rec",
    )
    queue_max_batches: int = Field(
        8, ge=1, le=10_000, description="batches the reader may queue ahead of storage"
    )
    segment_max_bytes: Size = Field(
        256 * MiB,
        ge=1,
        le=U64_MAX,
        description="start a new segment file once the current one holds this",
    )
    fsync_interval_ms: int = Field(
        100,
        ge=1,
        le=60_000,
        description="fsync (and commit) at most this long after a write; "
        f"{NATS_FSYNC_INTERVAL_MS} with a nats:// source unless given, since it acknowledges "
        "each message only once durable",
    )
    fsync_max_bytes: Size = Field(
        16 * MiB,
        ge=1,
        le=U64_MAX,
        description="fsync (and commit) as soon as this many bytes are unsynced",
    )
    max_inflight_bytes: Size = Field(
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
    nats_connect_timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        allow_inf_nan=False,
        description="with a nats:// source: how long the start may wait for a server to accept "
        "the connection and answer about the stream and consumer before it gives up (exit 1); "
        "unset: it waits as long as it takes",
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
        "INFO", description="the least grave lines logged"
    )
    log_format: LogFormat = Field(
        "text",
        description="text: one line per event (time, level, logger: message); json: one object "
        "per line with the same fields, for a log collector",
    )
    config: Path | None = Field(
        None,
        description="a TOML file of settings; its keys are the options' names in snake_case "
        '(output_dir = "data", fsync_max_bytes = "16MiB"); an unknown key is refused',
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The flags come first, added by CliApp; then these, in order.
        named = _CONFIG_FILE.get()
        if named is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, _config_source(settings_cls, named))

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("source")
    @classmethod
    def _source_syntax(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("sink")
    @classmethod
    def _sink_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sink(value)
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

    @field_validator("follow")
    @classmethod
    def _follow_needs_a_file(cls, follow: bool, info: ValidationInfo) -> bool:
        # `source` is declared first, so it is in info.data once it is valid.
        source = info.data.get("source")
        if follow and source is not None and not parse_source(source).followable:
            raise ValueError(f"reads a file, and the source is {source!r}")
        return follow

    @field_validator("grace_period_s")
    @classmethod
    def _fits_grace_period(cls, grace: float | None, info: ValidationInfo) -> float | None:
        timeout = info.data.get("shutdown_timeout_s")
        if grace is not None and timeout is not None and timeout + GRACE_MARGIN_S > grace:
            raise ValueError(
                f"the shutdown timeout, {timeout:g} s, leaves less than {GRACE_MARGIN_S:g} s "
                "before this grace period ends: the kill would race the drain; lower the "
                "shutdown timeout or raise the grace period"
            )
        return grace

    @property
    def source_spec(self) -> SourceSpec:
        """The parsed `source`."""
        return parse_source(self.source)

    @property
    def sink_spec(self) -> SinkSpec | None:
        """The parsed `sink`, None for the output directory."""
        return None if self.sink is None else parse_sink(self.sink)

    @property
    def side_dir(self) -> Path | None:
        """Where last-stop.json and rejected/ go: the output directory, unless records go to a
        sink and no --output-dir was given (then nowhere)."""
        if self.sink is not None and "output_dir" not in self.model_fields_set:
            return None
        return self.output_dir

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
            chunk_bytes=self.source_read_chunk_bytes,
            max_record_bytes=self.max_record_bytes,
            generate_rate=self.generate_rate,
            follow=self.follow_config,
            queue_max_batches=self.queue_max_batches,
            shutdown_timeout_s=self.shutdown_timeout_s,
            output_dir=self.side_dir,
            connect_timeout_s=self.nats_connect_timeout_s,
        )

    @property
    def source_read_chunk_bytes(self) -> int:
        """--read-chunk-bytes as given; when not given and records go to a sink, smaller reads
        (SINK_READ_CHUNK_BYTES): a remote store takes records at a pace of its own, and every
        batch read and queued is published before a stop ends."""
        if self.sink is not None and "read_chunk_bytes" not in self.model_fields_set:
            return SINK_READ_CHUNK_BYTES
        return self.read_chunk_bytes

    @property
    def source_fsync_interval_ms(self) -> int:
        """--fsync-interval-ms as given; when not given, the source's default (shorter for a
        nats:// source: see FSYNC_INTERVAL_MS in sources/nats/url.py)."""
        if "fsync_interval_ms" in self.model_fields_set:
            return self.fsync_interval_ms
        if isinstance(self.source_spec, NatsSpec):
            return NATS_FSYNC_INTERVAL_MS
        return self.fsync_interval_ms

    @property
    def storage_config(self) -> StorageConfig:
        """How to open the storage client."""
        return StorageConfig(
            directory=self.output_dir,
            segment_max_bytes=self.segment_max_bytes,
            fsync_interval_ms=self.source_fsync_interval_ms,
            fsync_max_bytes=self.fsync_max_bytes,
            max_inflight_bytes=self.max_inflight_bytes,
        )

    def given_as(self, name: str) -> str:
        """Where option `name` of these settings was set, in the user's words."""
        return given_as(name, self._argv, self._config)


# The option groups of --help, in order, and the fields in each (in the order declared).
GROUPS = {
    "source": (
        "source",
        "follow",
        "follow_poll_ms",
        "follow_rotated_quiet_ms",
        "generate_rate",
        "read_chunk_bytes",
        "max_record_bytes",
    ),
    "output and durability": (
        "output_dir",
        "sink",
        "queue_max_batches",
        "segment_max_bytes",
        "fsync_interval_ms",
        "fsync_max_bytes",
        "max_inflight_bytes",
    ),
    "stopping": ("shutdown_timeout_s", "grace_period_s"),
    "metrics and logs": (
        "metrics_host",
        "metrics_port",
        "status_interval_s",
        "log_level",
        "log_format",
    ),
    "configuration": ("config",),
    "NATS": ("nats_connect_timeout_s",),
}
NATS_HELP = """\
  --source 'nats://[USER:PASS@]HOST[:PORT][,HOST...]/STREAM?consumer=NAME[&OPTION=VALUE...]'

reads the JetStream stream STREAM through the durable pull consumer NAME, which replicas of \
shovel share; each message is acknowledged once it is durable. OPTION: subject=FILTER, \
batch=N, creds=PATH, ack_wait_s=SECONDS, max_ack_pending=N, tls_ca=PATH, \
tls_cert=PATH, tls_key=PATH (cert and key together); tls://... instead of nats://... asks for \
TLS with the system's roots or tls_ca.

  --sink 'nats://[USER:PASS@]HOST[:PORT][,HOST...]/STREAM?subject=SUBJECT[&OPTION=VALUE...]'

stores each record as one message on SUBJECT of the JetStream stream STREAM (its payload the \
record without the newline), in atomic batches, exactly once: the stream holds the resume \
point, so a restart needs no local state. One shovel writes each subject; a second is \
refused. The stream needs allow_atomic: true for speed. OPTION: batch=N (records per atomic \
batch, 1-1000), creds=PATH, tls_ca=PATH, tls_cert=PATH, tls_key=PATH."""
# What to type for each option; flags and choices have none.
METAVARS = {
    "source": "SOURCE",
    "output_dir": "DIR",
    "sink": "SINK",
    "follow_poll_ms": "MS",
    "follow_rotated_quiet_ms": "MS",
    "generate_rate": "PER_SECOND",
    "read_chunk_bytes": "SIZE",
    "max_record_bytes": "SIZE",
    "queue_max_batches": "N",
    "segment_max_bytes": "SIZE",
    "fsync_interval_ms": "MS",
    "fsync_max_bytes": "SIZE",
    "max_inflight_bytes": "SIZE",
    "shutdown_timeout_s": "SECONDS",
    "grace_period_s": "SECONDS",
    "nats_connect_timeout_s": "SECONDS",
    "metrics_host": "HOST",
    "metrics_port": "PORT",
    "status_interval_s": "SECONDS",
    "config": "FILE",
}
_FIELD_GROUP = {field: group for group, fields in GROUPS.items() for field in fields}
EPILOG = """\
other command:
  {prog} demo
        the naive ways to stop an asyncio pipeline next to shovel's, in numbers and a
        picture (see {prog} demo --help)

Exit codes: 0 everything read is durable; 1 fatal runtime error (storage failure, output \
directory in use or damaged, a source that does not continue what was stored, no NATS server \
within --nats-connect-timeout-s); 2 bad usage or configuration; 3 stopped by the deadline or a \
second signal with records read but not stored (their number is logged).

Stop signals: SIGTERM, SIGINT and SIGHUP (unless started with it ignored, as by nohup) stop \
shovel cleanly; a second one stops waiting for the queue."""


def env_name(field: str) -> str:
    """The environment variable of `field`."""
    return f"{ENV_PREFIX}{field.upper()}"


def _shown(field: str) -> str:
    default = Settings.model_fields[field].default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, int) and METAVARS.get(field) == "SIZE":
        return format_size(default)
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def _help(field: str) -> str:
    description = Settings.model_fields[field].description or ""
    return f"{description} (default: {_shown(field)}; env: {env_name(field)})"


def version() -> str:
    """The installed version (native/Cargo.toml's, which maturin writes into the metadata)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: build it with make wheel or maturin develop)"


def _cli(prog: str) -> CliSettingsSource[Any]:
    """The command line's parser, as pydantic-settings reads it."""
    parser = Parser(
        prog=prog,
        usage="%(prog)s [OPTION...]\n       %(prog)s demo [OPTION...]",
        description=inspect.cleandoc(Settings.__doc__ or ""),
        epilog=EPILOG.format(prog=prog),
    )
    parser.add_argument("-h", "--help", action="help", help="show this help and exit")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="show the version"
    )
    for title in GROUPS:
        parser.group(title, NATS_HELP if title == "NATS" else None)
    source: CliSettingsSource[Any] = CliSettingsSource(
        Settings,
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        add_argument_method=placer(_FIELD_GROUP, METAVARS, _help),
        formatter_class=HelpFormatter,
    )
    return source


def given_as(name: str, argv: list[str], config: ConfigFile | None = None) -> str:
    """How the user set option `name`: its flag when the command line has it, else its
    environment variable as spelled in the environment, else its key in the config file
    (else its flag: the default was not set by anyone)."""
    flag = "--" + name.replace("_", "-")
    if flag_given(argv, flag):
        return flag
    spelled = env_spelled(env_name(name))
    if spelled is not None:
        return spelled
    if config is not None and name in config.keys:
        return f"{name} in {config.path}"
    return flag


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The --config file, and the keys it sets."""

    path: Path
    keys: frozenset[str]


@dataclass(slots=True)
class _ConfigRead:
    """The --config file as the user named it (`how`: the flag or the variable) and, once
    the model's sources have read it, what it set."""

    path: Path
    how: str
    file: ConfigFile | None = None


def _config_named(argv: list[str]) -> _ConfigRead | None:
    """The --config file the flags or the environment name, or None."""
    how: str | None = "--config"
    path = flag_value(argv, "--config")
    if path is None:
        how = env_spelled(env_name("config"))
        path = None if how is None else os.environ[how]
    if path is None or how is None:
        return None
    if not path:
        raise ConfigError(f"{how} '': is empty: name a TOML file, or leave it out")
    return _ConfigRead(Path(path), how)


def _config_source(
    settings_cls: type[BaseSettings], named: _ConfigRead
) -> TomlConfigSettingsSource:
    """pydantic-settings' TOML source for the --config file, with what it would not say well
    said here: a missing or unreadable file (it would skip it), bad TOML, an unknown key."""
    path, how = named.path, named.how
    try:
        with path.open("rb"):
            pass
        source = TomlConfigSettingsSource(settings_cls, path)
    except OSError as e:
        raise ConfigError(f"{how} {str(path)!r}: cannot read it: {reason(e)}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{how} {str(path)!r}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{how} {str(path)!r}: not valid TOML: not UTF-8") from None
    known = list(Settings.model_fields)
    for key, value in source.toml_data.items():
        if key == "config":
            raise ConfigError(f"config in {path}: a config file cannot name another")
        if key not in known:
            near = difflib.get_close_matches(key.replace("-", "_"), known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"{key} in {path}: no such setting{hint}")
        if isinstance(value, dict | list):
            raise ConfigError(
                f"{key} in {path}: expected a single value, got a TOML table or array"
            )
    named.file = ConfigFile(path, frozenset(source.toml_data))
    return source


def _one_line(err: ValidationError, argv: list[str], config: ConfigFile | None) -> str:
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"] if x != "__root__"]
        msg = _said(e["msg"], loc[0] if loc else "", e.get("ctx", {}))
        if not loc:
            parts.append(msg)
            continue
        where = given_as(loc[0], argv, config)
        if Settings.model_fields[loc[0]].annotation in (bool, "bool"):
            # A flag has no value to show (what follows it is another option).
            parts.append(f"{where}: {msg}")
        else:
            parts.append(f"{where} {_as_typed(where, argv, e['input'])!r}: {msg}")
    return "; ".join(parts)


def _said(msg: str, field: str, ctx: dict[str, Any]) -> str:
    """pydantic's message after a colon: lower-cased, and a size's bound in its unit."""
    msg = msg.removeprefix("Value error, ")
    if METAVARS.get(field) == "SIZE":
        if "ge" in ctx:
            return f"must be at least {format_size(int(ctx['ge']))}"
        if "le" in ctx:
            return f"must be at most {format_size(int(ctx['le']))}"
    return msg[:1].lower() + msg[1:]


def _as_typed(where: str, argv: list[str], parsed: object) -> object:
    """The value as the user wrote it where it was set (a size before its conversion)."""
    if where.startswith("--"):
        typed = flag_value(argv, where)
        return parsed if typed is None else typed
    if where in os.environ:
        return os.environ[where]
    return str(parsed) if isinstance(parsed, Path) else parsed


def load_settings(argv: list[str], prog: str = "shovel") -> Settings:
    """Settings from `argv`, the environment, the --config file and defaults; raises
    ConfigError on bad input. `--help` and `--version` print and raise SystemExit(0)."""
    named = _config_named(argv)
    token = _CONFIG_FILE.set(named)
    try:
        settings = CliApp.run(Settings, cli_args=argv, cli_settings_source=_cli(prog))
    except ValidationError as e:
        config = None if named is None else named.file
        raise ConfigError(redact(_one_line(e, argv, config))) from None
    except SettingsError as e:
        raise ConfigError(redact(str(e).removeprefix("error parsing CLI: "))) from None
    finally:
        _CONFIG_FILE.reset(token)
    settings._argv = list(argv)
    settings._config = None if named is None else named.file
    return settings
