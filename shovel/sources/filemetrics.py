"""What a file source shows on /metrics: the file being read, how far, and its rotations.
Imported when the metrics are set up, not with the source: a bad flag costs no metrics
library."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shovel.sources.file import FileProgress


def label_text(text: str) -> str:
    """`text` as a label value can always be encoded: a path that is not valid UTF-8 (Python
    keeps its undecodable bytes as surrogates) shows those bytes as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class FileProgressCollector(Collector):
    """The shovel_source_* families, once the source has opened a file (none before)."""

    def __init__(self, read_progress: Callable[[], FileProgress | None]) -> None:
        self._read_progress = read_progress

    def collect(self) -> Iterator[Metric]:
        p = self._read_progress()
        if p is None:
            return
        info = GaugeMetricFamily(
            "shovel_source_file_info", "The file being read (1)", labels=["path"]
        )
        info.add_metric([label_text(p.path)], 1.0)
        yield info
        yield GaugeMetricFamily(
            "shovel_source_file_size_bytes", "Size of the file being read", p.size
        )
        yield GaugeMetricFamily(
            "shovel_source_position_bytes", "Read position in the file being read", p.position
        )
        yield GaugeMetricFamily(
            "shovel_source_lag_bytes",
            "Bytes of the file being read that are not read yet (size - position)",
            max(p.size - p.position, 0),
        )
        yield CounterMetricFamily(
            "shovel_source_rotations",
            "Rotations of the followed file seen (rename + create, or copy + truncate)",
            p.rotations,
        )
        yield CounterMetricFamily(
            "shovel_source_files_skipped",
            "Files of the followed file whose unread lines could not be read (a compressed "
            "or unreadable rotation, a file stored from that is gone), each logged",
            p.skipped,
        )
