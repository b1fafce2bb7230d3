"""A TCP proxy to Redis that can freeze chosen connections (tests only).

A frozen connection stays open and forwards nothing, in either direction: what a
half-open connection looks like to the process on the other end. ``freeze(b"XREAD")``
freezes every connection that has sent a command containing those bytes; new
connections are forwarded as before.
"""

from __future__ import annotations

import select
import socket
import threading


class StallProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`freeze` stalls connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[dict] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            pair = {"client": client, "server": server, "seen": bytearray(), "frozen": False}
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: dict) -> None:
        try:
            self._forward(pair)
        except OSError:  # closed by close() or by either end
            pass

    def _forward(self, pair: dict) -> None:
        client, server = pair["client"], pair["server"]
        while not self._stop.is_set():
            if pair["frozen"]:
                self._stop.wait(0.1)
                continue
            ready, _, _ = select.select([client, server], [], [], 0.1)
            for sock in ready:
                if pair["frozen"]:
                    break
                data = sock.recv(65536)
                if not data:
                    client.close()
                    server.close()
                    return
                if sock is client:
                    if len(pair["seen"]) < 1 << 20:
                        pair["seen"] += data
                    server.sendall(data)
                else:
                    client.sendall(data)

    def freeze(self, marker: bytes) -> int:
        """Freeze the open connections that have sent ``marker``; returns how many."""
        with self._lock:
            hit = [p for p in self._pairs if marker in p["seen"]]
            for p in hit:
                p["frozen"] = True
        return len(hit)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        with self._lock:
            for p in self._pairs:
                for s in (p["client"], p["server"]):
                    try:
                        s.close()
                    except OSError:
                        pass
