"""The demonstration behind `python -m shovel demo`: common ways to stop an asyncio pipeline, side
by side with shovel's, on the same reader, queue and storage task.

Most of what is here is the WRONG WAY to stop a service, kept on purpose to be measured
(naive.py, pyclient.py's checkpoint, pyremote.py). The service never imports this package: only
the `demo` subcommand does, and it runs each pattern in a subprocess of its own (child.py).
"""
