"""`python -m shovel`: record stop signals first, then load and run the service."""

from shovel import signals

# Before any heavier import: a SIGTERM that arrives while the rest loads must still mean
# "stop cleanly" rather than kill the process.
signals.install_early()

from shovel.cli import run  # noqa: E402  (deliberately after the handlers)

run()
