"""The classic design, for the throughput benchmark: shovel's own service (reader task,
bounded queue, storage task, stop sequence) with its native storage client swapped for the
demo's pure-Python one (shovel/demo/pyclient.py), run in a process of its own:

  python bench/classic.py --source INPUT --output-dir OUTPUT [shovel flags]

It is `python -m shovel` (shovel.cli.run: same flags, settings, logging, exit codes); only the
storage the runner opens differs, passed to it as the demo passes its own
(shovel/demo/child.py).

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
from shovel.storage import StorageConfig, Store

LATENCY_S = 0.0
SEED = 0


async def open_classic(config: StorageConfig) -> Store:
    """The Python client in the output directory, with no latency."""
    return PythonStore(config.directory, LATENCY_S, SEED)


def main() -> None:
    """Runs `python -m shovel`'s entry point (shovel.cli.run: flags from sys.argv, the same
    logging, exit codes and quick exit) with the Python client as its storage."""
    cli.run(open_storage=open_classic)


if __name__ == "__main__":
    main()
