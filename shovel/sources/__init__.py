"""Every source shovel reads, and the `--source` syntax that names one.

A source is one module that keeps the lifecycle of sources/api.py, with a spec (its parsed
`--source` text, which opens it) and a parser, registered below in `_PARSERS`, in the order
they are tried. Every source yields `Batch`es of whole records, cut at newlines (records.py),
with the source offset just past the batch, and `Rejected` pieces for lines over the record
limit. The first batch of a run carries the source's descriptor (identity.py), which the
checkpoint keeps, so that a restart resumes only the input it was reading.
"""

from __future__ import annotations

from collections.abc import Callable

from shovel.sources.api import (
    FollowConfig,
    Source,
    SourceError,
    SourceMismatch,
    SourceOptions,
    SourceSpec,
    SourceUnavailable,
)
from shovel.sources.file import FileSource
from shovel.sources.generator import (
    GeneratorSource,
    GeneratorSpec,
    generated_record,
    parse_generator,
)
from shovel.sources.nats.url import NatsSpec, parse_nats_source
from shovel.sources.path import FileSpec, parse_file
from shovel.sources.stream import StdinSpec, StreamSource, parse_stdin

__all__ = [
    "FileSource",
    "FileSpec",
    "FollowConfig",
    "GeneratorSource",
    "GeneratorSpec",
    "NatsSpec",
    "Source",
    "SourceError",
    "SourceMismatch",
    "SourceOptions",
    "SourceSpec",
    "SourceUnavailable",
    "StdinSpec",
    "StreamSource",
    "generated_record",
    "parse_source",
]

# Each parser takes the `--source` text and returns its spec, None when the text is not of its
# kind, or raises ValueError with a reason; a path takes whatever no other kind claims.
_PARSERS: tuple[Callable[[str], SourceSpec | None], ...] = (
    parse_stdin,
    parse_generator,
    parse_nats_source,
    parse_file,
)


def parse_source(text: str) -> SourceSpec:
    """Parses the `--source` syntax; raises ValueError with a reason."""
    for parse in _PARSERS:
        spec = parse(text)
        if spec is not None:
            return spec
    raise ValueError(f"not a source: {text!r}")
