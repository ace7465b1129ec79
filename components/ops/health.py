"""Is a server up: one HTTP health check, and waiting for a starting server to answer.

The one place that polls health endpoints: the team's servers (components.tracking.server), the
servers `mesa infra up` records, and the Prefect server `mesa deploy` looks for or starts.
"""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def health_problem(url: str, timeout_s: float = 2.0, method: str = "GET") -> str | None:
    """None when a GET (or ``method``) of `url` answers 2xx, else why not (one line).

    Args:
        url (str): the health endpoint, e.g. ``http://127.0.0.1:4200/api/health``.
        timeout_s (float, default 2.0): seconds for the connection and the answer.
        method (str, default "GET"): e.g. "HEAD" to ask whether a file is there without reading it.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout_s) as answer:
            if 200 <= answer.status < 300:
                return None
            return f"HTTP {answer.status}"
    except urllib.error.HTTPError as err:  # before URLError: it is one, and carries the status
        return f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:  # refused, timed out, unknown host
        reason = getattr(err, "reason", err)
        return f"{type(reason).__name__}: {reason}"


def wait_until_healthy(url: str, timeout_s: float, *, exit_code: Callable[[], int | None] | None = None,
                       label: str = "server", details: Callable[[], str] | None = None,
                       interval_s: float = 0.25) -> None:
    """Block until `url` answers 2xx.

    Args:
        url (str): the health endpoint.
        timeout_s (float): seconds to wait.
        exit_code (Callable[[], int | None] | None, default None): the server process's exit status
            now, None while it runs (e.g. ``Popen.poll``); an exit ends the wait at once.
        label (str, default "server"): what messages call it.
        details (Callable[[], str] | None, default None): text appended to a failure (e.g. the
            tail of the server's log).
        interval_s (float, default 0.25): seconds between checks.

    Raises:
        RuntimeError: the process exited, or `url` did not answer within `timeout_s` (with the
            last reason and `details`).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        problem = health_problem(url, timeout_s=min(2.0, max(0.5, timeout_s)))
        if problem is None:
            return
        code = exit_code() if exit_code else None
        suffix = f":\n{details()}" if details else ""
        if code is not None:
            raise RuntimeError(f"{label} exited with status {code} before {url} answered{suffix}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label} did not answer {url} within {timeout_s:g} s (last: {problem}){suffix}")
        time.sleep(interval_s)


def port_in_use(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on `host`:`port` now.

    Args:
        host (str): an address or name.
        port (int): the port.
        timeout_s (float, default 0.5): connection timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0
