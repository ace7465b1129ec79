"""Progress lines for long loops: ``[label] done/total extra``, one line per call."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any


def progress_printer(label: str, stream: IO[str] | None = None, elapsed: bool = False) -> Callable[..., None]:
    """A ``(done, total, *extra)`` callback that prints one progress line per call.

    Floats among `extra` are shown with four significant digits, anything else as text.

    Args:
        label (str): the bracketed prefix, e.g. the stage name.
        stream (IO[str] | None, default None): where the lines go; None: standard output.
        elapsed (bool, default False): end each line with the seconds since the printer was made.

    Returns:
        Callable[..., None]: ``show(done, total, *extra)``.
    """
    started = time.perf_counter()

    def show(done: int, total: int, *extra: Any) -> None:
        text = " ".join(f"{e:.4g}" if isinstance(e, float) else str(e) for e in extra)
        line = f"[{label}] {done}/{total} {text}".rstrip()
        if elapsed:
            line += f" ({time.perf_counter() - started:.0f} s)"
        print(line, file=stream or sys.stdout, flush=True)

    return show
