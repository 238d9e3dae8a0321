"""The benchmark suite: `python -m bench` (or `make bench`).

It starts the service as a user would (`context-manager ws`, or `serve` where the REST API is
needed) and, in the same run, the bare-`websockets` baseline in bench/reference_server.py; it
drives each with a load generator in a separate process pinned to the other core, and prints
every figure with its ratio to the baseline. docs/performance.md explains the method.
"""
