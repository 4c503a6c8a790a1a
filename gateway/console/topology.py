"""The console's graph: who calls this proxy, the proxy, and what it calls (each upstream with its instances; for
gateways the services and datacenters they route), laid out in three columns for an SVG the template draws.
Each edge that carries a listener's (or a routed cluster's) traffic has its live numbers (gateway.console.traffic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.console.source import ConsoleSource
from gateway.console.stats import Stats
from gateway.console.traffic import EdgeSource, EdgeTraffic, edge_traffic

WIDTH = 990
NODE_W = 230
COLUMNS = (10, 380, 750)  # x of the callers, this proxy, the upstreams; edge labels sit in the gaps
TOP = 16
GAP = 22
HEAD = 40  # a node's title band
LINE = 17
MAX_LINES = 12


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    status: str  # ok | warn | bad | info


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    label: str
    kind: str  # callers | self | service | datacenter
    status: str
    lines: tuple[Line, ...]
    x: float = 0.0
    y: float = 0.0

    @property
    def w(self) -> float:
        return NODE_W

    @property
    def h(self) -> float:
        return HEAD + LINE * len(self.lines) + 8


@dataclass(frozen=True, slots=True)
class Edge:
    id: str
    source: str
    target: str
    traffic_source: EdgeSource | None
    traffic: EdgeTraffic | None = None
    path: str = ""
    label_x: float = 0.0
    label_y: float = 0.0

    @property
    def label_lines(self) -> tuple[str, str]:
        """(rate, errors and p99), drawn as two short lines beside the edge."""
        t = self.traffic
        if t is None:
            return "", ""
        if t.rate is None:
            return f"… {t.unit}", "measuring"
        detail = f"{t.error_rate or 0:.0%} err"
        if t.p99_ms is not None:
            detail += f" · p99 {t.p99_ms:.1f} ms"
        return f"{t.rate:.1f} {t.unit}", detail

    @property
    def label(self) -> str:
        return " · ".join(x for x in self.label_lines if x)

    @property
    def status(self) -> str:
        t = self.traffic
        if t is None or not t.rate:
            return "idle"
        return "bad" if (t.error_rate or 0) >= 0.05 else "ok"


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [
                {"id": n.id, "label": n.label, "kind": n.kind, "status": n.status, "lines": [ln.text for ln in n.lines]}
                for n in self.nodes
            ],
            "edges": [
                {
                    "id": e.id,
                    "source": e.source,
                    "target": e.target,
                    "label": e.label,
                    "traffic": None if e.traffic is None else e.traffic.to_json(),
                }
                for e in self.edges
            ],
        }


def _clip(lines: list[Line]) -> tuple[Line, ...]:
    if len(lines) <= MAX_LINES:
        return tuple(lines)
    return (*lines[: MAX_LINES - 1], Line(f"… and {len(lines) - MAX_LINES + 1} more", "info"))


def _endpoint_line(e: dict[str, Any]) -> Line:
    text = f"{e['address']}:{e['port']} {e['datacenter']} {e['health']}"
    if e.get("ejected"):
        text += " · ejected"
        return Line(text, "bad")
    if e.get("active_requests"):
        text += f" · {e['active_requests']} active"
    status = {"passing": "ok", "warning": "warn"}.get(e["health"], "bad")
    return Line(text, status)


def _cluster_node(c: dict[str, Any], node_id: str, label: str) -> Node:
    lines = [_endpoint_line(e) for e in c["endpoints"]] or [Line("no instances", "bad")]
    usable = any(e["in_rotation"] for e in c["endpoints"])
    kind = "datacenter" if str(c["name"]).startswith("remote:") else "service"
    return Node(node_id, label, kind, "ok" if usable else "bad", _clip(lines))


def build(
    src: ConsoleSource, latest: Stats, base: Stats | None, seconds: float, clusters: list[dict[str, Any]]
) -> Topology:
    cfg, snap = src.config(), src.snapshot
    ready = src.not_ready() is None and snap.ready()[0]
    left: list[Node] = []
    right: list[Node] = []
    edges: list[Edge] = []

    def traffic(es: EdgeSource | None) -> EdgeTraffic | None:
        return None if es is None else edge_traffic(es, latest, base, seconds)

    self_lines = [Line(f"{cfg.mode} in {cfg.datacenter}", "info")]
    if cfg.mode == "sidecar":
        self_lines.append(Line(f"app {cfg.service.address}:{cfg.service.port} ({cfg.service.protocol})", "info"))
    self_lines.append(Line(f"snapshot v{snap.version}", "info"))
    me = Node("self", f"{cfg.service.name} · this proxy", "self", "ok" if ready else "bad", tuple(self_lines))

    inbound_listener = {
        "sidecar": "inbound" if cfg.inbound is not None else None,
        "mesh-gateway": "mesh-gateway",
        "terminating-gateway": "terminating-gateway",
    }.get(cfg.mode)
    if inbound_listener is not None:
        rules = snap.intentions.rules() if cfg.mode == "sidecar" else []
        lines = [
            Line(f"{r['Source']} ({r.get('Action') or 'L7 permissions'})", "ok" if r.get("Action") != "deny" else "bad")
            for r in rules
        ]
        if cfg.mode == "sidecar":
            policy = "allow" if snap.intentions.default_allow else "deny"
            lines.append(Line(f"anyone else: {policy} (default)", "info"))
        else:
            lines.append(Line("mesh callers, routed by SNI" if cfg.mode == "mesh-gateway" else "mesh callers", "info"))
        left.append(Node("callers", "callers", "callers", "ok", _clip(lines)))
        http = cfg.mode == "sidecar" and cfg.service.protocol == "http"
        edges.append(Edge(inbound_listener, "callers", "self", EdgeSource(inbound_listener, http=http)))
    elif cfg.mode == "ingress-gateway":
        left.append(Node("callers", "clients outside the mesh", "callers", "ok", (Line("plaintext in", "info"),)))
        edges.append(Edge("ingress", "callers", "self", None))

    seen_listeners: set[str] = set()
    for c in clusters:
        lname = c["listener"]
        if lname in ("mesh-gateway", "terminating-gateway"):
            node_id = f"cluster:{c['name']}"
            right.append(_cluster_node(c, node_id, str(c["name"])))
            edges.append(Edge(f"{lname}/{c['name']}", "self", node_id, None))
            continue
        label = c["service"] if not c.get("subset") else f"{c['service']} ({c['subset']})"
        if c["datacenter"] != snap.datacenter:
            label += f" · {c['datacenter']}"
        node_id = f"cluster:{lname}/{c['name']}"
        right.append(_cluster_node(c, node_id, label))
        http = c["protocol"] == "http"
        if c.get("routed"):
            es = EdgeSource(lname, http=True, cluster=str(c["name"]))
            edges.append(Edge(f"{lname}/{c['name']}", "self", node_id, es))
        elif lname in seen_listeners:  # a listener shared by several services (ingress HTTP): numbers once
            edges.append(Edge(f"{lname}/{c['name']}", "self", node_id, None))
        else:
            edges.append(Edge(lname, "self", node_id, EdgeSource(lname, http=http)))
        seen_listeners.add(lname)

    return _layout(
        left, me, right, [e if e.traffic_source is None else _with(e, traffic(e.traffic_source)) for e in edges]
    )


def _with(e: Edge, t: EdgeTraffic | None) -> Edge:
    return Edge(e.id, e.source, e.target, e.traffic_source, t)


def _stack(nodes: list[Node], x: float, top: float) -> list[Node]:
    out, y = [], top
    for n in nodes:
        out.append(Node(n.id, n.label, n.kind, n.status, n.lines, x, y))
        y += n.h + GAP
    return out


def _height(nodes: list[Node]) -> float:
    return sum(n.h for n in nodes) + GAP * max(0, len(nodes) - 1)


def _layout(left: list[Node], me: Node, right: list[Node], edges: list[Edge]) -> Topology:
    tallest = max(_height(left), me.h, _height(right), 120.0)
    placed = [
        *_stack(left, COLUMNS[0], TOP + (tallest - _height(left)) / 2),
        *_stack([me], COLUMNS[1], TOP + (tallest - me.h) / 2),
        *_stack(right, COLUMNS[2], TOP + (tallest - _height(right)) / 2),
    ]
    by_id = {n.id: n for n in placed}
    laid: list[Edge] = []
    for e in edges:
        a, b = by_id.get(e.source), by_id.get(e.target)
        if a is None or b is None:
            continue
        x1, y1 = a.x + a.w, a.y + HEAD / 2
        x2, y2 = b.x, b.y + HEAD / 2
        mx = (x1 + x2) / 2
        path = f"M {x1:.0f} {y1:.0f} C {mx:.0f} {y1:.0f}, {mx:.0f} {y2:.0f}, {x2:.0f} {y2:.0f}"
        # The label sits by the edge's flat end away from this proxy, where edges never cross: on the side the
        # curve does not come from (below it when this proxy is higher up, else above).
        (ex, ey), other_y = ((x1 + 72, y1), y2) if e.target == "self" else ((x2 - 72, y2), y1)
        lx, ly = ex, (ey + 17 if other_y < ey else ey - 22)
        laid.append(Edge(e.id, e.source, e.target, e.traffic_source, e.traffic, path, lx, ly))
    return Topology(tuple(placed), tuple(laid), WIDTH, tallest + 2 * TOP)
