"""The capacity table: ``python -m loadtest.capacity`` measures, per served model and frame size,
Redis bytes per session, Redis ops and archive bytes per step (real Redis, real SessionStore and
Archiver), steps/s on this CPU (the engine in process) and estimates steps/s per H200 from FLOP
counts; it writes docs/capacity.md (the table) and docs/capacity.json (the raw figures).

Parts: :mod:`.flops` (FLOP counter per model kind), :mod:`.models` (served models at a size, one
step's bytes), :mod:`.redis_bytes`, :mod:`.cpu`, :mod:`.estimate` (derived figures), :mod:`.doc`
(the page) and :mod:`.__main__` (the command).
"""
