"""The agent's pace of the many-sessions workload, shared by ``gateway_proc.py`` and ``bare_proc.py``.

Both run as scripts (their folder is first on ``sys.path``), so they import
this as ``pace``: a ``--before`` tree measured by ``bench.scale`` needs no copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator


async def paced(n: int, rate: float, seconds: float) -> AsyncIterator[int]:
    """Yield 0, 1, 2, ... as each falls due: ``n`` sessions, ``rate`` events a second each, for ``seconds``.

    Round robin: the g-th event of all is session ``g % n``'s, due at
    ``start + g / (n * rate)``.
    """
    total = int(n * rate * seconds)
    start = time.monotonic()
    g = 0
    while g < total:
        due = min(total, int((time.monotonic() - start) * rate * n) + 1)
        while g < due:
            yield g
            g += 1
        await asyncio.sleep(0.002)  # the agent's pace, not a synchronisation
