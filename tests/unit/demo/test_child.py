"""The demonstration's counting source passes every step of the lifecycle through: a step
added to `Source` and not passed on would silently do nothing in the demo's shovel runs."""

from __future__ import annotations

import inspect

from shovel.demo.child import CountingSource
from shovel.sources import Source


def test_the_counting_source_overrides_every_step() -> None:
    steps = {
        name
        for name, member in inspect.getmembers(Source)
        if not name.startswith("_") and callable(member)
    }
    assert steps, "Source has no steps"
    inherited = {name for name in steps if getattr(CountingSource, name) is getattr(Source, name)}
    assert inherited == set()
