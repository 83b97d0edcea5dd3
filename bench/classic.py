"""The classic design, for the throughput benchmark: shovel's own service (reader task,
bounded queue, storage task, stop sequence) with its native storage client swapped for the
demo's pure-Python one (shovel/demo/pyclient.py), run in a process of its own:

  python bench/classic.py --source INPUT --output-dir OUTPUT [shovel flags]

It is `python -m shovel` (shovel.cli.run: same flags, settings, logging, exit codes); only the
storage the runner opens differs, swapped as in the demo (shovel/demo/child.py), and only in
this process (the benchmark sends it no signal).

The client runs with a latency of 0: every batch is a write task of its own that appends to
OUTPUT/python-store/records.ndjson with os.write, and close() awaits the pending ones.

What that client makes durable: nothing. It never calls fsync (on the data file, on the offset
file it replaces, or on the directory), so when this process exits 0 its copy is in the page
cache, not on disk, and its offset file says everything was stored. dd and shovel exit with
their copies fsynced. The benchmark reports this beside the figures, and times the fdatasync
the copy would still need separately (see copies.run_classic).

shovel's file reader hands out batches as native `Records`, which the Python client copies
into a bytes object once per batch, in its write task, before writing it.
"""

from __future__ import annotations

from shovel import cli
from shovel.demo.pyclient import PythonStore
from shovel.service import runner
from shovel.storage import StorageConfig

LATENCY_S = 0.0
SEED = 0


class ClassicStorage:
    """What the runner calls in place of `shovel.storage.Storage`."""

    @staticmethod
    async def open(config: StorageConfig) -> PythonStore:
        """The Python client in the output directory, with no latency."""
        return PythonStore(config.directory, LATENCY_S, SEED)


def main() -> None:
    """Runs `python -m shovel`'s entry point (shovel.cli.run: flags from sys.argv, the same
    logging, exit codes and quick exit) with the Python client as its storage."""
    # The runner looks `Storage` up when it opens it: replaced here, in this process only.
    setattr(runner, "Storage", ClassicStorage)  # noqa: B010
    cli.run()


if __name__ == "__main__":
    main()
