"""The ``abserve`` command: train | register | validate | up | status | predict | down, the
admin API's commands, and the benchmarks.

``up`` leaves a running application behind and records what it started (Ray
head PID, redis-server PID, URLs) in ``.abserve/state.json``; ``down`` stops
exactly those processes, by PID. The processes themselves are managed in
serve/local/; each command module here adds its own sub-parsers:

- models.py   train, register, validate
- deploy.py   up, deploy-version, down (precheck.py: what `up` checks first)
- observe.py  status, predict, scale-history (scaling.py: the scale-step tracker)
- admin.py    the admin API: experiment, traffic, shadow, ..., canary, report
- bench.py    bench, soak, bench-precision (forwarded to benchmarks/)
"""

from serve.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
