"""The server process: the listening socket (bound by us, so a bind failure is one UserError), uvicorn's h11
protocol with JSON replies to malformed HTTP and a deadline for a request's headers, and the model loaded
on a thread while the port already answers (503 until it is ready)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmdistill.bert.serve.app import Model, build_app
from llmdistill.bert.serve.settings import ServeSettings
from llmdistill.errors import UserError, os_error_reason

if TYPE_CHECKING:
    from llmdistill.bert.serve.predictor import Predictor

log = logging.getLogger("llmdistill")


def raw_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 JSON error reply that closes the connection, written below h11's state machine."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


class _Connection(h11.Connection):
    """h11's connection, remembering why it refused a request (uvicorn's reply drops the reason)."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.refused = e
            raise


def protocol_for(timeout_s: float) -> type[H11Protocol]:
    class Protocol(H11Protocol):
        """uvicorn's h11 protocol, with two changes: a request that h11 refuses (a Content-Length that is not a
        number, headers too long, a broken request line) gets a JSON 400; a request whose headers have not all
        arrived `timeout_s` after the connection opened (or after the previous reply) gets a JSON 408 and the
        connection is closed (an idle connection is closed silently). The body's deadline is the app's."""

        deadline: asyncio.TimerHandle | None = None
        partial = False

        def __init__(self, config, *args, **kwargs) -> None:
            super().__init__(config, *args, **kwargs)
            self.conn = _Connection(h11.SERVER, config.h11_max_incomplete_event_size)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self.partial = True
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in (or h11 refused them)
                self._disarm()
                self.partial = False

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request whose headers are already in
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            reason = str(self.conn.refused or "")[:200] or "refused by the HTTP parser"
            self.transport.write(raw_error(400, "Bad Request", f"malformed HTTP request: {reason}"))
            self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self.partial = False
            self.deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expired(self) -> None:
            self.deadline = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return  # a request is in (its body has the app's deadline)
            if self.partial and self.conn.their_state is h11.IDLE:
                self.transport.write(raw_error(408, "Request Timeout",
                                               f"the request's headers did not arrive within {timeout_s:g} s"))
            self.transport.close()

    return Protocol


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port, or one UserError (unknown host, port in use, not ours to bind)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"cannot listen on {host}:{port}: unknown host ({getattr(e, 'strerror', None) or e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart while old connections linger
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {os_error_reason(e)}") from None
    return sock


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM stop the server gracefully and the process then exits 0 (uvicorn re-raises them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class PredictionServer:
    """`bind()` (errors before anything loads), then `run()` (blocks; loads the model on a thread while the
    port answers 503; raises what loading raised). `stop()` from any thread."""

    def __init__(self, load: Callable[[], Predictor], settings: ServeSettings, verbose: bool = False):
        self.load, self.settings = load, settings
        self.model = Model(settings)
        self.sock: socket.socket | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()  # set once the model is loaded or failed to load
        config = uvicorn.Config(build_app(self.model), loop="asyncio", http=protocol_for(settings.timeout_s),
                                lifespan="off", log_config=None, access_log=verbose, backlog=settings.backlog,
                                h11_max_incomplete_event_size=settings.max_header_bytes,
                                timeout_keep_alive=settings.keep_alive_s,
                                timeout_graceful_shutdown=max(1, round(settings.timeout_s)), server_header=False)
        self.uvicorn = _Uvicorn(config)

    def bind(self) -> None:
        self.sock = listen(self.settings.host, self.settings.port, self.settings.backlog)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            self.model.predictor = self.load()
            log.info("serve: model %s loaded in %.1f s; /predict is ready", self.model.predictor.name,
                     time.perf_counter() - start)
        except BaseException as e:  # noqa: BLE001 (handed to run(), which raises it in the caller's thread)
            self.error = e
            self.uvicorn.should_exit = True
        finally:
            self.ready.set()

    def run(self) -> None:
        if self.sock is None:
            self.bind()
        threading.Thread(target=self._load, name="llmdistill-load", daemon=True).start()
        try:
            self.uvicorn.run(sockets=[self.sock])
        except SystemExit as e:  # uvicorn exits on a start-up failure; say it in one line of ours
            raise UserError(f"the server on {self.url} could not start (uvicorn exit {e.code})") from None
        finally:
            self.sock.close()
            self.model.executor.shutdown(wait=False, cancel_futures=True)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.uvicorn.should_exit = True


@contextlib.contextmanager
def serving(load: Callable[[], Predictor], settings: ServeSettings, wait: bool = True) -> Iterator[PredictionServer]:
    """A PredictionServer running on a thread of this process (tests, benchmarks); `wait`: until the model
    is loaded (its loading error is raised here)."""
    server = PredictionServer(load, settings)
    server.bind()

    def run() -> None:
        with contextlib.suppress(BaseException):  # a loading error stays in server.error
            server.run()

    thread = threading.Thread(target=run, name="llmdistill-serve", daemon=True)
    thread.start()
    try:
        if wait:
            server.ready.wait()
            if server.error is not None:
                raise server.error
        yield server
    finally:
        server.stop()
        thread.join(30)
