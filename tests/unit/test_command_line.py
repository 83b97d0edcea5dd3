"""The command line a person meets: --help in groups with metavars that say what to type, sizes
with units, "did you mean", a TOML config file below flags and the environment, --version, and
errors that name what the user typed where they typed it."""

from __future__ import annotations

import json
import logging
import re
import sys
import tomllib
from pathlib import Path

import pytest

from shovel.logs import JsonFormatter, format_asked
from shovel.settings import GROUPS, ConfigError, Settings, load_settings
from shovel.sizes import format_size, parse_size
from shovel.sources.nats.url import FSYNC_INTERVAL_MS as NATS_FSYNC_INTERVAL_MS

ROOT = Path(__file__).resolve().parents[2]


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        load_settings(["--help"], "shovel")
    assert exit_.value.code == 0
    return capsys.readouterr().out


def sections(text: str) -> dict[str, str]:
    """--help's sections by title (a line `title:` at the margin)."""
    found: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if re.fullmatch(r"[a-zA-Z][a-zA-Z ]*:", line):
            title = line[:-1]
            found[title] = ""
        elif title:
            found[title] += line + "\n"
    return found


def test_help_groups_every_option_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    found = sections(help_text(capsys))
    titles = [t for t in found if t in GROUPS]
    assert titles == list(GROUPS)
    for title, fields in GROUPS.items():
        flags = re.findall(r"^  (--[a-z-]+)(?![a-z-]| ')", found[title], re.MULTILINE)
        assert flags == [f"--{f.replace('_', '-')}" for f in fields], title
    grouped = {f for fields in GROUPS.values() for f in fields}
    assert grouped == set(Settings.model_fields)
    assert "NATS" in found
    assert "other command" in found
    assert "shovel demo" in found["other command"]


def test_help_metavars_say_what_to_type(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    typed = re.findall(r"--[a-z-]+ (\S+)", text)
    assert not {"str", "int", "float", "Path", "{float,null}"} & set(typed), typed
    assert "null" not in text
    assert "--fsync-max-bytes SIZE" in text
    assert "--shutdown-timeout-s SECONDS" in text
    assert "--output-dir DIR" in text
    assert "--config FILE" in text
    assert "--log-format {text,json}" in text
    assert "(default: 16MiB; env: SHOVEL_FSYNC_MAX_BYTES)" in " ".join(text.split())
    assert "(default: unset; env: SHOVEL_GRACE_PERIOD_S)" in " ".join(text.split())


def test_help_states_the_precedence(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text(capsys).split())
    assert "its flag, its SHOVEL_* environment variable, the --config file, its default" in text


def test_help_keeps_the_nats_url_syntax_whole_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A narrow terminal: argparse would cut a long word to fit.
    monkeypatch.setenv("COLUMNS", "60")
    lines = help_text(capsys).splitlines()
    url = "nats://[USER:PASS@]HOST[:PORT][,HOST...]/STREAM?consumer=NAME[&OPTION=VALUE...]"
    assert any(url in line for line in lines)
    assert not any(line.rstrip().endswith("nats://") for line in lines)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 * 1024**2),
        ("256MB", 256 * 1000**2),
        ("1GiB", 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("4096", 4096),
        ("64 kib", 64 * 1024),
        ("2KB", 2000),
    ],
)
def test_a_size_takes_a_unit(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert load_settings(["--fsync-max-bytes", text]).fsync_max_bytes == size


@pytest.mark.parametrize("text", ["16XB", "MiB", "-1", "1e6", "0.5B", ""])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size|not a whole number of bytes"):
        parse_size(text)


def test_a_size_default_is_shown_in_its_unit() -> None:
    assert format_size(256 * 1024**2) == "256MiB"
    assert format_size(1000) == "1000"


def test_a_size_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOVEL_SEGMENT_MAX_BYTES", "64MiB")
    assert load_settings([]).segment_max_bytes == 64 * 1024**2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sorce", "x.log"], "--sorce: no such option; did you mean --source?"),
        (
            ["--fsync-max-byte=1"],
            "--fsync-max-byte: no such option; did you mean --fsync-max-bytes?",
        ),
        (["--frobnicate"], "--frobnicate: no such option; see --help for the options"),
        (["x.log"], "'x.log': unexpected argument"),
    ],
)
def test_a_mistyped_option_gets_the_nearest_one(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(argv)
    assert str(err.value) == message or str(err.value).startswith(message), err.value


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"SHOVEL_FSYNC_MAX_BYTES": "lots"}, [], "SHOVEL_FSYNC_MAX_BYTES 'lots': not a size"),
        ({}, ["--fsync-max-bytes", "lots"], "--fsync-max-bytes 'lots': not a size"),
        ({}, ["--source", "generate:abc"], "--source 'generate:abc': generate:N needs a whole"),
        ({}, ["--log-format", "xml"], "--log-format 'xml': input should be 'text' or 'json'"),
        ({}, ["-"], "'-': unexpected argument; did you mean --source -?"),
        ({}, ["--source"], "--source: needs a value"),
        ({}, ["--follow=maybe"], "--follow: takes no value (say --follow or --no-follow)"),
        ({"SHOVEL_FOLLOW": "1"}, [], "SHOVEL_FOLLOW: reads a file, and the source is 'generate'"),
        (
            {"SHOVEL_GRACE_PERIOD_S": "8"},
            ["--shutdown-timeout-s", "5"],
            "SHOVEL_GRACE_PERIOD_S '8': the shutdown timeout, 5 s, leaves less than 5 s",
        ),
        ({}, ["--read-chunk-bytes", "1GiB"], "--read-chunk-bytes '1GiB': must be at most 256MiB"),
        ({}, ["--fsync-max-bytes", "0"], "--fsync-max-bytes '0': must be at least 1"),
        ({}, ["--fsync-max-bytes", "1.5"], "--fsync-max-bytes '1.5': not a whole number of bytes"),
    ],
)
def test_an_error_names_what_was_typed_where(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(argv)
    assert str(err.value).startswith(message), err.value
    # Said once: no "got X (got Y)".
    assert str(err.value).count("'lots'") + str(err.value).count("abc") <= 1, err.value


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shovel.toml"
    path.write_text(text)
    return path


def test_config_file_precedence_flags_then_environment_then_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(
        tmp_path,
        'fsync_interval_ms = 11\nfsync_max_bytes = "2MiB"\nsource = "generate:5"\n'
        'output_dir = "from-file"\n',
    )
    monkeypatch.setenv("SHOVEL_FSYNC_INTERVAL_MS", "22")
    monkeypatch.setenv("SHOVEL_FSYNC_MAX_BYTES", "3MiB")
    s = load_settings(["--config", str(path), "--fsync-interval-ms", "33"])
    assert s.fsync_interval_ms == 33  # flag over environment over file
    assert s.fsync_max_bytes == 3 * 1024**2  # environment over file
    assert s.source == "generate:5"  # file over default
    assert s.output_dir == Path("from-file")
    assert s.shutdown_timeout_s == Settings.model_fields["shutdown_timeout_s"].default
    monkeypatch.setenv("SHOVEL_CONFIG", str(path))
    assert load_settings([]).source == "generate:5"


def test_a_nats_source_fsyncs_sooner_unless_the_interval_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nats = ["--source", "nats://h/S?consumer=c"]
    assert load_settings(nats).storage_config.fsync_interval_ms == NATS_FSYNC_INTERVAL_MS
    assert load_settings(["--source", "generate:5"]).storage_config.fsync_interval_ms == 100
    given = load_settings([*nats, "--fsync-interval-ms", "100"])
    assert given.storage_config.fsync_interval_ms == 100
    monkeypatch.setenv("SHOVEL_FSYNC_INTERVAL_MS", "50")
    assert load_settings(nats).storage_config.fsync_interval_ms == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fsync_max_byte = 5\n",
            "fsync_max_byte in {}: no such setting; did you mean fsync_max_bytes?",
        ),
        ("output-dir = 'x'\n", "output-dir in {}: no such setting; did you mean output_dir?"),
        ("colour = 'blue'\n", "colour in {}: no such setting"),
        ("config = 'other.toml'\n", "config in {}: a config file cannot name another"),
        ("fsync_max_bytes = 'lots'\n", "fsync_max_bytes in {} 'lots': not a size"),
        ("fsync_max_bytes = [1]\n", "fsync_max_bytes in {}: expected a single value"),
        ("source = \n", "--config '{}': not valid TOML"),
    ],
)
def test_a_config_file_error_names_the_key_and_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(["--config", str(path)])
    assert str(err.value).startswith(message.format(path)), err.value


def test_a_missing_config_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigError, match=r"^--config '.*nope.toml': cannot read it: no such file or directory$"
    ):
        load_settings(["--config", str(tmp_path / "nope.toml")])
    monkeypatch.setenv("SHOVEL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"^SHOVEL_CONFIG '.*nope.toml': cannot read it"):
        load_settings([])


def test_version_is_the_native_crates(capsys: pytest.CaptureFixture[str]) -> None:
    with (ROOT / "native" / "Cargo.toml").open("rb") as f:
        expected = tomllib.load(f)["package"]["version"]
    with pytest.raises(SystemExit) as exit_:
        load_settings(["--version"], "shovel")
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"shovel {expected}\n"


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("shovel", level, __file__, 1, message, None, None)


def test_a_json_log_line_is_one_object_with_the_text_lines_fields() -> None:
    line = JsonFormatter().format(record(f"stored {3} records"))
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields) == ["time", "level", "logger", "message"]
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "INFO",
        "shovel",
        "stored 3 records",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", fields["time"])


def test_a_json_log_line_masks_secrets_and_keeps_the_traceback_in_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging.LogRecord(
            "shovel", logging.ERROR, __file__, 1, "nats://u:hunter2@h/S", None, sys.exc_info()
        )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    fields = json.loads(line)
    assert "hunter2" not in line
    assert "RuntimeError: boom" in fields["exception"]


@pytest.mark.parametrize(
    ("argv", "env", "asked"),
    [
        ([], {}, "text"),
        (["--log-format", "json"], {}, "json"),
        (["--log-format=JSON"], {}, "json"),
        ([], {"SHOVEL_LOG_FORMAT": "json"}, "json"),
        (["--log-format", "text"], {"SHOVEL_LOG_FORMAT": "json"}, "text"),
        (["--log-format", "xml"], {}, "text"),
    ],
)
def test_the_log_format_of_an_error_in_the_settings(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], asked: str
) -> None:
    monkeypatch.delenv("SHOVEL_LOG_FORMAT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert format_asked(argv) == asked


def test_an_option_is_named_where_it_was_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path, 'source = "in.log"\n')
    from_file = load_settings(["--config", str(path)])
    assert from_file.given_as("source") == f"source in {path}"
    assert from_file.given_as("output_dir") == "--output-dir"  # the default: nobody set it
    monkeypatch.setenv("shovel_source", "other.log")
    assert load_settings(["--config", str(path)]).given_as("source") == "shovel_source"
    assert load_settings(["--config", str(path), "--source=x.log"]).given_as("source") == "--source"


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shovel.toml"
    path.write_bytes(b'source = "\xff"\n')
    with pytest.raises(ConfigError, match=r"not valid TOML: not UTF-8$"):
        load_settings(["--config", str(path)])


def test_a_true_is_not_a_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fsync_max_bytes in .* True: not a size"):
        load_settings(["--config", str(config(tmp_path, "fsync_max_bytes = true\n"))])


@pytest.mark.parametrize("asked", [["--help"], ["--version"]])
def test_help_and_version_work_whatever_the_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, asked: list[str]
) -> None:
    monkeypatch.setenv("SHOVEL_CONFIG", str(tmp_path / "not-mounted.toml"))
    with pytest.raises(SystemExit) as exit_:
        load_settings(asked)
    assert exit_.value.code == 0
