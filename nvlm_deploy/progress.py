"""A small progress bar: counts, rate and ETA on a terminal; one line at the end otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
             stream=None) -> Iterator[T]:
    """Yield `items`, drawing `desc  12/40 [3.1 it/s, eta 9s]` on stderr when it is a terminal."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    tty = stream.isatty()
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if tty and (now - last > 0.1 or count == total):
            last = now
            stream.write("\r" + _line(desc, count, total, unit, now - start))
            stream.flush()
    elapsed = time.monotonic() - start
    stream.write(("\r" if tty else "") + _line(desc, count, total, unit, elapsed) + "\n")
    stream.flush()


def _line(desc: str, count: int, total: int | None, unit: str, elapsed: float) -> str:
    rate = count / elapsed if elapsed > 0 else 0.0
    of = f"/{total}" if total else ""
    eta = f", eta {max(0.0, (total - count) / rate):.0f}s" if total and rate and count < total else ""
    return f"{desc}  {count}{of} {unit} [{elapsed:.1f}s, {rate:.1f} {unit}/s{eta}]"
