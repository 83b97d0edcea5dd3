"""A small launcher that runs one command and writes what wait4 says about it to a file:
python -I -S bench/launch.py REPORT_PATH COMMAND [ARG...]

Why it exists: Linux keeps a process's peak RSS (ru_maxrss) across execve, and a child
starts with the memory of the process that forked it, so a command started straight from the
benchmark (tens or hundreds of MiB: hashing buffers, parsed metrics, matplotlib) reports at
least the benchmark's own size. Started from this launcher, which imports nothing and stays at
a few MiB, the command's peak RSS is its own (dd's figure shows the remaining floor).

The report is one JSON object: exit_code, wall_s (fork to reap, measured here so that the
launcher's own start-up is not counted), user_s, sys_s, maxrss_kib. The launcher exits 0
when it could run the command at all, whatever the command's exit code.
"""

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    """Runs argv[1:] as a child, writes the report to argv[0]; returns the launcher's code."""
    if len(argv) < 2:
        print("usage: launch.py REPORT_PATH COMMAND [ARG...]", file=sys.stderr)
        return 2
    report_path, cmd = argv[0], argv[1:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"launch.py: cannot run {cmd[0]}: {e}", file=sys.stderr)
        os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    report = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
    }
    with open(report_path, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
