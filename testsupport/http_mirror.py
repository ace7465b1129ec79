"""A loopback HTTP mirror of a Major TOM folder, with byte accounting and injectable faults.

Serves files under `root` (e.g. a synthetic world: s2l2a/metadata.parquet, s2l2a/images/...)
on 127.0.0.1 with HEAD and single-range GET (206 Partial Content), the way Hugging Face's CDN
answers the ingest's range reads. It records every byte range it sends, per file, so tests and
benchmarks can check what a client really read. Faults, per URL path:

    "404"        answer 404 Not Found
    "drop"       send the headers and half of the body, then cut the connection (every time)
    "drop_once"  the same, for the first GET of the path only (a retry then succeeds)
    aliases      {path: other_path}: serve another file's bytes under this path

Nothing here reaches the network: the server binds 127.0.0.1 only.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class MirrorServer:
    """`with MirrorServer(root) as mirror:` serves `root` at `mirror.url` until the block ends.

    Attributes:
        url: base URL, e.g. http://127.0.0.1:40123 (no trailing slash).
        served: {path: [(start, end_exclusive), ...]} byte ranges sent, in order.
        faults: {path: "404" | "drop" | "drop_once"}; may be changed while serving.
        aliases: {path: served_path}.
        latency_s: sleep before answering each request (a stand-in for a far-away server).
    """

    def __init__(self, root: str | Path, latency_s: float = 0.0, faults: dict[str, str] | None = None,
                 aliases: dict[str, str] | None = None):
        self.root = Path(root).resolve()
        self.latency_s = latency_s
        self.faults = dict(faults or {})
        self.aliases = dict(aliases or {})
        self.served: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.requests = 0
        self._lock = threading.Lock()
        self._dropped: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- accounting ---------------------------------------------------------------------------

    def bytes_served(self, path: str | None = None) -> int:
        with self._lock:
            items = [self.served.get(path, [])] if path else list(self.served.values())
            return sum(end - start for ranges in items for start, end in ranges)

    def clear_faults(self) -> None:
        """No faults, no aliases, no latency; drop_once faults armed again when next set."""
        with self._lock:
            self.faults.clear()
            self.aliases.clear()
            self._dropped.clear()
            self.latency_s = 0.0

    def reset_counts(self) -> None:
        with self._lock:
            self.served.clear()
            self.requests = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> "MirrorServer":
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as with a real CDN

            def log_message(self, format, *args):  # noqa: A002 - quiet: tests read counts, not logs
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                with mirror._lock:
                    mirror.requests += 1
                if mirror.latency_s:
                    time.sleep(mirror.latency_s)
                path = self.path.split("?", 1)[0]
                fault = mirror.faults.get(path)
                target = mirror.root / mirror.aliases.get(path, path).lstrip("/")
                if fault == "404" or not target.is_file() or mirror.root not in target.resolve().parents:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = target.stat().st_size
                start, end = 0, size
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(size, int(match.group(2)) + 1) if match.group(2) else size
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                if not body:
                    return
                with target.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read(end - start)
                drop = fault == "drop" or (fault == "drop_once" and path not in mirror._dropped)
                if drop:
                    with mirror._lock:
                        mirror._dropped.add(path)
                    data = data[: len(data) // 2]
                self.wfile.write(data)
                with mirror._lock:
                    mirror.served[path].append((start, start + len(data)))
                if drop:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="mirror", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
