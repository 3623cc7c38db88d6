"""``dpokit label``: the labelling page on a local HTTP server (the standard library's).

The page is static; the candidate comes as JSON from ``GET /api/state`` and the page puts every
piece of it in with ``textContent``, so text from the data never becomes markup. Judgements and
undos are ``POST``s naming the candidate they are about: a second click on the same button, or a
page left open on an old state, changes nothing and gets the current state back.

Only requests meant for this server are served: a ``POST`` must be JSON (a form on another site
cannot send that without the browser asking first, and this server never says yes), from this
page's own origin if the browser names one, and to the host the server listens on (so a site
whose name is made to point at 127.0.0.1 is refused too).
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dpokit.errors import UserError
from dpokit.label.candidates import read_candidates
from dpokit.label.page import PAGE
from dpokit.label.session import Session

MAX_BODY = 4096
CHOICE_NAMES = ("A", "B", "tie", "both bad")


class LabelServer(ThreadingHTTPServer):
    """The HTTP server of one session; ``url`` once bound. Request threads are joined on close,
    so a judgement being written is finished before the process ends."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, session: Session, host: str, port: int):
        self.session = session
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", where="--port") from None
        bound_host, self.port = self.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{self.port}/"
        # on loopback, the names this server answers to; from other machines, whatever name they used
        self.hosts = ({f"{name}:{self.port}" for name in (shown, host, "localhost", "127.0.0.1")}
                      if is_loopback(host) else None)

    def ours(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    def server_close(self) -> None:
        super().server_close()
        self.session.close()


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    timeout = 10  # a connection that never sends its request does not hold a thread (or the close) for long

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request would bury the one line that matters (the URL)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _ours(self) -> bool:
        return self.server.ours(self.headers.get("Host", ""))

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if not self._ours():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "unknown host"})
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        if path == "/api/state":
            return self._json(HTTPStatus.OK, self.server.session.state())
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _body(self) -> dict | None:
        """The request's JSON object, or None for a request this server does not take."""
        origin = self.headers.get("Origin")
        if not self._ours() or (origin is not None and origin != "http://" + self.headers.get("Host", "")):
            return None
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return None
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or not 0 < int(length) <= MAX_BODY:
            return None
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError:
            return None
        return body if isinstance(body, dict) and isinstance(body.get("id"), str) else None

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if body is None:
            return self._json(HTTPStatus.FORBIDDEN, {"error": "not a request of this page"})
        session, path = self.server.session, self.path.split("?", 1)[0]
        try:
            if path == "/api/judge" and body.get("choice") in CHOICE_NAMES:
                done = session.judge(body["id"], body["choice"])
            elif path == "/api/undo":
                done = session.undo(body["id"])
            else:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "unknown request"})
        except UserError as exc:  # the disk refused the write: the page says so and nothing counts as saved
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        self._json(HTTPStatus.OK if done else HTTPStatus.CONFLICT, session.state())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_annotator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "annotator"


def start(data: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 8765,
          annotator: str | None = None, seed: int = 0, log=print) -> LabelServer:
    """Read the candidates and the judgements so far, bind the server and return it (not yet serving)."""
    if not is_loopback(host):
        print(f"dpokit: warning: --host {host}: the labelling page is open to other machines on the network; "
              "it has no password", file=sys.stderr)
    candidates = read_candidates(data)
    session = Session(candidates, out, annotator or default_annotator(), seed, log)
    try:
        return LabelServer(session, host, port)
    except BaseException:
        session.close()
        raise


def serve(data: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 8765,
          annotator: str | None = None, seed: int = 0, log=print) -> int:
    """Serve the labelling page until stopped; the command's exit code."""
    server = start(data, out, host, port, annotator, seed, log)
    s = server.session
    log(f"labelling {len(s.candidates)} candidates ({len(s.judged)} judged) as {s.annotator!r} into {s.out}\n"
        f"open {server.url}  (Ctrl-C stops; every judgement is already saved)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
