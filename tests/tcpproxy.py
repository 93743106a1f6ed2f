"""A loopback TCP proxy the tests can cut: a service going away under a running server."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target` ((host, port), or a Unix socket's path) until cut(); after
    that, closes what it holds and every connection it is offered (the service is gone, as far as the
    client can tell)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.cut_off.is_set():
                client.close()
                continue
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            else:
                upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            for end in self.open:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def postgres_proxy() -> tuple[TcpProxy, str]:
    """A proxy to the test database, and the DATABASE_URL that goes through it."""
    from django.db import connection

    from tests.conftest import database_url_for

    db = connection.settings_dict
    host, port = db.get("HOST") or "", db.get("PORT") or 5432
    proxy = TcpProxy(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, int(port)))
    return proxy, database_url_for({**db, "HOST": "127.0.0.1", "PORT": proxy.port})
