"""The fault-injection suite: ``make chaos`` (``python -m bench.chaos``).

Real servers on loopback (``topology``), a real ``python -m sidecar serve``
(``service``) driven over HTTP (``client``), every operation recorded
(``history``) and checked afterwards (``check``), per scenario (``sentinel``,
``single``, ``cluster``), into a table (``report``) and ``bench/CHAOS.md``.
"""
