"""`python -m shovel`: catch stop signals first (importing shovel.cli does it before any other
import, see _early.py), then load and run the service."""

from shovel.cli import run

run()
