"""Relay sides whose write back-pressure reaches the HTTP connection on the other end.

An L4 relay pairs two sides, so a full write buffer on one pauses reading on the other (``Side._other``).
HTTP sides are not paired: a ``ServerConnection`` or ``ClientConnection`` owns each, and which connection is
"the other end" changes with every exchange. These sides hand ``pause_writing``/``resume_writing`` to their owner
(``peer_pause``/``peer_resume``), which pauses the connection currently feeding it. Without this a slow reader on
one side makes the proxy buffer a streamed body without limit.
"""

from __future__ import annotations

from gateway.l4 import Side, TLSSide


class FlowSide(Side):
    __slots__ = ()

    def pause_writing(self) -> None:
        hook = getattr(self.relay, "peer_pause", None)
        if hook is not None:
            hook()

    def resume_writing(self) -> None:
        hook = getattr(self.relay, "peer_resume", None)
        if hook is not None:
            hook()


class FlowTLSSide(TLSSide):
    __slots__ = ()

    def pause_writing(self) -> None:
        hook = getattr(self.relay, "peer_pause", None)
        if hook is not None:
            hook()

    def resume_writing(self) -> None:
        hook = getattr(self.relay, "peer_resume", None)
        if hook is not None:
            hook()
