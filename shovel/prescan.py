"""What the command line and the environment say about one option before the settings are
parsed: the log format of a usage error, the --config file, and where a bad value was typed."""

import os


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of the last `flag VALUE` or `flag=VALUE` in `argv`, or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.removeprefix(flag + "=")
    return value


def flag_given(argv: list[str], flag: str) -> bool:
    """Whether `argv` has `flag`, with or without a value."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def env_spelled(name: str) -> str | None:
    """The environment variable `name` as spelled in the environment (the settings read
    variables whatever their case), or None."""
    return next((k for k in os.environ if k.upper() == name.upper()), None)
