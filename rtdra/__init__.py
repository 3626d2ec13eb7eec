"""RT-DRA core: the real-time request model, kernel-exact deadline bandwidth
arithmetic, schedulability tests, placement policies and the node ledger.

This package holds no web framework and (outside the small I/O edges
``rtdra.sched``, ``rtdra.host`` and ``rtdra.store``) does no I/O, so every
service (extender, webhook, node agent) decides with the very same numbers.
The layering is a checked contract: see ``.importlinter``.
"""
