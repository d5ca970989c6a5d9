"""The event loop every long-running command (and the benchmark's echo baseline) runs on.

uvloop when it is installed: asyncpg's socket traffic and grpc.aio's callbacks cost noticeably
less Python time on it. The standard loop otherwise (e.g. on Windows, where uvloop is absent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency wherever it installs
        return asyncio.run(main)
    return uvloop.run(main)
