"""The native client's lifecycle in real processes: a script that exits without closing it, a
spawned child that uses one, a forked child that must leave its parent's alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import assert_clean_stderr, read_checkpoint, stored_bytes


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


UNCLOSED = """
    import asyncio, sys
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    async def main():
        s = await Storage.open(StorageConfig(Path("out"), 1 << 20, 50, 1 << 20, 1 << 24))
        data = b"".join(b"r%d\\n" % i for i in range(1000))
        for i in range(200):
            await s.write(Batch(data, 1000, (i + 1) * len(data)))
        # Returns with writes in flight and without closing.
    asyncio.run(main())
"""


@pytest.mark.parametrize("iteration", range(5))
def test_exit_without_close_flushes_at_exit_with_a_warning(tmp_path: Path, iteration: int) -> None:
    result = run_script(UNCLOSED, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" in result.stderr
    assert "was not closed" in result.stderr
    assert_clean_stderr(result.stderr)
    data = b"".join(b"r%d\n" % i for i in range(1000))
    assert stored_bytes(tmp_path / "out") == data * 200
    cp = read_checkpoint(tmp_path / "out")
    assert cp is not None
    assert cp.committed_offset == 200 * len(data)


SPAWN_CHILD = """
    import asyncio, multiprocessing
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    def child(out):
        async def main():
            s = await Storage.open(StorageConfig(Path(out), 1 << 20, 5, 1 << 20, 1 << 24))
            await s.write(Batch(b"from the child\\n", 1, 15))
            await s.close(10)
        asyncio.run(main())

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        p = ctx.Process(target=child, args=("out",))
        p.start()
        p.join(60)
        raise SystemExit(p.exitcode)
"""


def test_a_spawned_child_writes_and_closes(tmp_path: Path) -> None:
    script = tmp_path / "spawn_child.py"
    script.write_text(textwrap.dedent(SPAWN_CHILD))
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    assert stored_bytes(tmp_path / "out") == b"from the child\n"


FORK_CHILD = """
    import asyncio, os, sys
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    async def main():
        return await Storage.open(StorageConfig(Path("out"), 1 << 20, 5, 1 << 20, 1 << 24))

    storage = asyncio.run(main())
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child runs the exit hooks: they must leave the parent's client alone
    _, status = os.waitpid(pid, 0)
    asyncio.run(storage.close(5))
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_exits_without_touching_the_parents_client(tmp_path: Path) -> None:
    result = run_script(FORK_CHILD, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "fork()" not in result.stderr, result.stderr
