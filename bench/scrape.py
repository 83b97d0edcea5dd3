"""Reading shovel's /metrics: one scrape as plain numbers, and quantiles estimated from the
buckets of a histogram, the way Prometheus' histogram_quantile does."""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts by upper bound (the last bound is +Inf), with sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float
    count: float

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since `earlier` (a scrape of the same histogram)."""
        if self.bounds != earlier.bounds:
            raise ValueError("histograms with different buckets")
        return Histogram(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def per_bucket(self) -> list[tuple[float, float, float]]:
        """(lower bound, upper bound, observations) of each bucket."""
        rows, low, below = [], 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            rows.append((low, bound, cum - below))
            low, below = bound, cum
        return rows

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1), interpolated linearly inside its bucket; the highest finite
        bound when it falls in the +Inf bucket; NaN with no observations."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        for low, high, n in self.per_bucket():
            if n > 0 and rank <= n:
                if math.isinf(high):
                    return low
                return low + (high - low) * rank / n
            rank -= n
        return self.bounds[-2]


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape of /metrics: counters and gauges by name, histograms by name."""

    values: dict[str, float]
    histograms: dict[str, Histogram]

    def value(self, name: str) -> float:
        """A counter or gauge (0 when absent)."""
        return self.values.get(name, 0.0)


def _histogram(samples: list[tuple[str, dict[str, str], float]], name: str) -> Histogram:
    buckets = sorted(
        (float(labels["le"]), value)
        for sname, labels, value in samples
        if sname == name + "_bucket"
    )
    total = next((v for s, _, v in samples if s == name + "_sum"), 0.0)
    count = next((v for s, _, v in samples if s == name + "_count"), 0.0)
    return Histogram(tuple(b for b, _ in buckets), tuple(v for _, v in buckets), total, count)


def parse(text: str) -> Scrape:
    """The numbers in a /metrics page."""
    values: dict[str, float] = {}
    histograms: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        samples = [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
        if family.type == "histogram":
            histograms[family.name] = _histogram(samples, family.name)
            continue
        for name, labels, value in samples:
            if not labels:
                values[name] = value
    return Scrape(values, histograms)


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    """Fetches and parses http://host:port/metrics; raises OSError when it does not answer."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
        body: bytes = r.read()
    return parse(body.decode())
