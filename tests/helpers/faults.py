"""shovel with storage faults injected (SHOVEL_FAULTS), and the `summary:` line that ends a
run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import Shovel

SUMMARY = re.compile(
    r"summary: read (\d+) records \((\d+) bytes\), stored (\d+) records \((\d+) bytes\), "
    r"committed offset (\d+), shutdown took ([0-9.]+)s, undelivered (\d+)$",
    re.MULTILINE,
)


class FaultyShovel(Shovel):
    """`helpers.Shovel` with SHOVEL_FAULTS in its environment (Shovel strips every SHOVEL_*
    variable, SHOVEL_FAULTS included). Same pattern: stderr to a file, stdout discarded."""

    def __init__(self, args: Sequence[str | os.PathLike[str]], log: Path, faults: str) -> None:
        # Not Shovel.__init__: it would start the process without the faults.
        self.log = log
        self._log_file = log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
        env["SHOVEL_FAULTS"] = faults
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shovel", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            env=env,
        )


@dataclass(frozen=True)
class Summary:
    """The fields of the final `summary:` log line."""

    read: int
    read_bytes: int
    stored: int
    stored_bytes: int
    committed_offset: int
    took_s: float
    undelivered: int


def summary(text: str) -> Summary:
    found = SUMMARY.findall(text)
    assert len(found) == 1, f"expected one summary line:\n{text}"
    f = found[0]
    return Summary(int(f[0]), int(f[1]), int(f[2]), int(f[3]), int(f[4]), float(f[5]), int(f[6]))
