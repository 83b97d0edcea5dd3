"""Where a benchmark runs: the work directory (never a tmpfs by default), its filesystem and
free space, and a description of the machine for the results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import BenchError, MiB

DEFAULT_WORK_PARENT = Path("/var/tmp")
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def _unescape_mount(field_text: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as \ooo octal escapes.
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mount_of(path: Path) -> tuple[str, str, str]:
    """Device, mount point and filesystem type holding `path` (the longest matching mount)."""
    target = str(path.resolve())
    best = ("unknown", "", "unknown")
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = _unescape_mount(parts[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (_unescape_mount(parts[0]), mount, parts[2])
    return best


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, or 'unknown'."""
    return mount_of(path)[2]


def _default_parent() -> Path:
    # /var/tmp first: /tmp is often tmpfs, where fdatasync costs nothing and dd would win big.
    for candidate in (DEFAULT_WORK_PARENT, Path(tempfile.gettempdir())):
        if candidate.is_dir() and filesystem_type(candidate) not in MEMORY_FILESYSTEMS:
            return candidate
    return DEFAULT_WORK_PARENT  # all in memory: the report says so


def make_workdir(requested: Path | None) -> tuple[Path, bool]:
    """The work directory, and whether this run created it (then it removes it at the end)."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested.resolve(), False
    return Path(tempfile.mkdtemp(prefix="shovel-bench-", dir=_default_parent())), True


def check_free_space(workdir: Path, need_bytes: int, what: str) -> None:
    """Raises BenchError when `workdir` has less than `need_bytes` free."""
    free = shutil.disk_usage(workdir).free
    if free < need_bytes:
        raise BenchError(
            f"not enough space in {workdir} for {what}: need {need_bytes / MiB:,.0f} MiB, "
            f"have {free / MiB:,.0f} MiB"
        )


@dataclass(frozen=True, slots=True)
class Machine:
    """What the results say about where they were measured."""

    cpu_model: str
    cores: int
    ram_gib: float
    kernel: str
    python: str
    workdir: str
    device: str
    filesystem: str
    load_at_start: float
    shovel_version: str
    shovel_commit: str

    @property
    def busy(self) -> bool:
        """Whether other work was running at the start (load average over half the cores)."""
        return self.load_at_start > self.cores / 2

    def rows(self) -> list[tuple[str, str]]:
        """Name and value of each line of the description."""
        return [
            ("CPU", f"{self.cpu_model}, {self.cores} cores"),
            ("RAM", f"{self.ram_gib:.1f} GiB"),
            ("kernel", self.kernel),
            ("Python", self.python),
            ("work directory", f"{self.workdir} ({self.filesystem} on {self.device})"),
            ("load average at start", f"{self.load_at_start:.2f}"),
            ("shovel", f"{self.shovel_version} ({self.shovel_commit})"),
        ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / MiB  # the value is in KiB
    except OSError:
        pass
    return 0.0


def _shovel_origin(cwd: Path) -> tuple[str, str]:
    """The installed shovel's version, and the git commit of its source tree when it is an
    editable install (`-dirty` when that tree has changes), else 'not a git checkout'."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import shovel; from shovel.settings import version; "
            "print(version()); print(shovel.__file__)",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,  # the shovel the benchmark runs, not a checkout's package in the current dir
    )
    if done.returncode != 0:
        raise BenchError(f"shovel cannot be imported by {sys.executable}:\n{done.stderr}")
    version, source = done.stdout.split("\n")[:2]
    git = subprocess.run(
        ["git", "-C", str(Path(source).parent), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = git.stdout.strip() if git.returncode == 0 else "not a git checkout"
    return version, commit


def describe_machine(workdir: Path) -> Machine:
    """The machine, the work directory's filesystem and the shovel under test."""
    device, _, fstype = mount_of(workdir)
    version, commit = _shovel_origin(workdir)
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 1,
        ram_gib=_ram_gib(),
        kernel=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        workdir=str(workdir),
        device=device,
        filesystem=fstype,
        load_at_start=os.getloadavg()[0],
        shovel_version=version,
        shovel_commit=commit,
    )
