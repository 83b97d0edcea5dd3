"""Settings precedence, validation messages and help."""

from __future__ import annotations

from pathlib import Path

import pytest

from shovel.settings import SINK_READ_CHUNK_BYTES, ConfigError, Settings, load_settings
from shovel.sources import GeneratorSource


def test_precedence_cli_over_env_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([]).fsync_interval_ms == Settings.model_fields["fsync_interval_ms"].default
    monkeypatch.setenv("SHOVEL_FSYNC_INTERVAL_MS", "7")
    assert load_settings([]).fsync_interval_ms == 7
    assert load_settings(["--fsync-interval-ms", "9"]).fsync_interval_ms == 9


def test_defaults_are_the_embedded_demo() -> None:
    s = load_settings([])
    assert s.source == "generate"
    assert s.output_dir == Path("shovel-data")
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 9108)
    assert s.shutdown_timeout_s == 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--fsync-interval-ms", "abc"],
            "--fsync-interval-ms 'abc': input should be a valid integer",
        ),
        (["--metrics-port", "70000"], "--metrics-port"),
        (["--source", "generate:x"], "generate:N needs a whole number"),
        (["--log-level", "chatty"], "--log-level"),
        (["--shutdown-timeout-s", "41", "--grace-period-s", "45"], "race the drain"),
        (["--bogus"], "--bogus: no such option; see --help for the options"),
    ],
)
def test_bad_values_give_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_grace_period_with_enough_margin_is_accepted() -> None:
    s = load_settings(["--shutdown-timeout-s", "30", "--grace-period-s", "45"])
    assert s.grace_period_s == 45


def test_help_documents_every_option_with_env_name_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        load_settings(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"SHOVEL_{name.upper()}" in text
    assert "(default: 9108; env: SHOVEL_METRICS_PORT)" in text
    assert "Exit codes" in text


def rate_of(settings: Settings) -> float:
    """The pace of the generator these settings open."""
    source = settings.source_spec.open(settings.source_options)
    assert isinstance(source, GeneratorSource)
    return source.rate


@pytest.mark.parametrize(
    ("argv", "rate"),
    [
        (["--source", "generate"], 1000.0),  # endless: a pace a person can watch
        (["--source", "generate:1000000"], 0.0),  # an exact count: as fast as possible
        (["--source", "generate:1000000", "--generate-rate", "50"], 50.0),
        (["--source", "generate", "--generate-rate", "0"], 0.0),
    ],
)
def test_an_exact_count_is_generated_as_fast_as_possible_unless_a_rate_is_given(
    argv: list[str], rate: float
) -> None:
    assert rate_of(load_settings(argv)) == rate


def test_the_generator_rate_from_the_environment_counts_as_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOVEL_GENERATE_RATE", "25")
    assert rate_of(load_settings(["--source", "generate:10"])) == 25.0


def test_a_sink_needs_no_output_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    sink = "nats://h/S?subject=records"
    s = load_settings(["--sink", sink])
    assert s.sink_spec is not None
    assert s.sink_spec.subject == "records"
    # Nothing local unless asked for: the stream holds records and the committed offset.
    assert s.side_dir is None
    assert s.source_options.output_dir is None
    assert load_settings(["--sink", sink, "--output-dir", "/d"]).side_dir == Path("/d")
    monkeypatch.setenv("SHOVEL_SINK", sink)
    assert load_settings([]).sink == sink
    # Without a sink the output directory holds everything, as before.
    monkeypatch.delenv("SHOVEL_SINK")
    assert load_settings([]).side_dir == load_settings([]).output_dir


def test_a_sink_reads_smaller_chunks_unless_told() -> None:
    sink = ["--sink", "nats://h/S?subject=records"]
    assert load_settings(sink).source_options.chunk_bytes == SINK_READ_CHUNK_BYTES
    told = load_settings([*sink, "--read-chunk-bytes", "1MiB"])
    assert told.source_options.chunk_bytes == 1024 * 1024
    assert load_settings([]).source_options.chunk_bytes == 1024 * 1024


def test_a_bad_sink_is_one_line() -> None:
    with pytest.raises(ConfigError, match="subject"):
        load_settings(["--sink", "nats://h/S"])
