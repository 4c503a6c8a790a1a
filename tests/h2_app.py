"""A plain HTTP/2 app speaking h2c with prior knowledge (python-hyper's h2 over a socket, a thread per
connection): it answers every request with what it received, as JSON, so tests can see what the sidecar sent."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import h2.config
import h2.connection
import h2.events
from hpack import NeverIndexedHeaderTuple


class H2App:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> H2App:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        c.sendall(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        pending: dict[int, int] = {}  # stream -> bytes of a /big answer still to send
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        # Which fields came "never indexed" (RFC 7541 §6.2.3): hpack gives those their own type.
                        never = sorted(h[0] for h in ev.headers if isinstance(h, NeverIndexedHeaderTuple))
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": b"", "never_indexed": never}
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self._answer(conn, ev.stream_id, streams.pop(ev.stream_id), pending)
                    elif isinstance(ev, h2.events.StreamReset):
                        pending.pop(ev.stream_id, None)
                self._pump(conn, pending)
                c.sendall(conn.data_to_send())
        except OSError:
            return
        finally:
            c.close()

    def _pump(self, conn: h2.connection.H2Connection, pending: dict[int, int]) -> None:
        """Sends what flow control allows of each /big answer (the rest on the next WINDOW_UPDATE)."""
        for sid, left in list(pending.items()):
            n = min(left, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            while n > 0:
                left -= n
                conn.send_data(sid, b"x" * n, end_stream=left == 0)
                n = min(left, conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if left:
                pending[sid] = left
            else:
                pending.pop(sid)

    def _answer(
        self, conn: h2.connection.H2Connection, sid: int, req: dict[str, Any], pending: dict[int, int]
    ) -> None:
        h = req["headers"]
        if h.get(":path", "").startswith("/big"):
            size = 8 << 20
            conn.send_headers(sid, [(":status", "200"), ("content-length", str(size))])
            pending[sid] = size
            self.requests.append({"path": h.get(":path")})
            return
        seen = {
            "version": "HTTP/2",
            "method": h.get(":method"),
            "path": h.get(":path"),
            "authority": h.get(":authority"),
            "headers": {k: v for k, v in h.items() if not k.startswith(":")},
            "body": req["body"].decode(errors="replace"),
            "never_indexed": req["never_indexed"],
        }
        self.requests.append(seen)
        body = json.dumps(seen).encode()
        conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                ("content-length", str(len(body)))])
        conn.send_data(sid, body, end_stream=True)
