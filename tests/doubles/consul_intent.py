"""Config entries and intentions of the Consul double (test support), on top of ConsulState.

``service-intentions`` entries are validated and normalized with meshgw's own model (connect/intentions.py, which
follows Consul's rules, consul.md §7); an intention written through ``/v1/connect/intentions/exact`` is stored as a
source inside the destination's ``service-intentions`` entry, as Consul ≥ 1.9 does, so every write wakes blocking
readers of ``/v1/config/service-intentions``.
"""

from __future__ import annotations

from typing import Any

from connect.intentions import (
    DEFAULT_NAMESPACE,
    KIND,
    WILDCARD,
    IntentionError,
    IntentionTable,
    ServiceIntentions,
    SourceIntention,
    check,
    flatten,
    parse_entry,
    sort_key,
)
from doubles.consul_state import ApiError, ConsulState

KINDS = (
    "service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver", "ingress-gateway",
    "terminating-gateway", "service-intentions", "mesh", "exported-services", "sameness-group",
    "control-plane-request-limit", "api-gateway", "tcp-route", "http-route", "file-system-certificate",
    "inline-certificate", "jwt-provider", "bound-api-gateway",
)  # fmt: skip
FIXED_NAMES = {"proxy-defaults": "global", "mesh": "mesh"}


def _key_of(body: dict[str, Any], name: str) -> str | None:
    for k in body:
        if isinstance(k, str) and k.lower() == name.lower():
            return k
    return None


class ConfigStore:
    """Config entries (one table index, consul.md §1) and the intention views derived from them."""

    def __init__(self, state: ConsulState):
        self.state = state

    @property
    def entries(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.state.config

    # ------------------------------------------------------------------ generic entries

    def normalize(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "Request decoding failed: Payload does not contain a kind/Kind key at the top level")
        kk = _key_of(body, "Kind")
        if kk is None:
            raise ApiError(400, "Request decoding failed: Payload does not contain a kind/Kind key at the top level")
        kind = body[kk]
        if kind not in KINDS:
            raise ApiError(400, f"Request decoding failed: invalid config entry kind: {kind}")
        if kind == KIND:
            clean = {k: v for k, v in body.items() if str(k).lower() not in ("createindex", "modifyindex")}
            try:
                return parse_entry(clean, "config entry").to_json()
            except IntentionError as e:
                status = 400 if "unknown key" in str(e) else 500
                prefix = "Request decoding failed: " if status == 400 else ""
                raise ApiError(status, prefix + str(e)) from None
        out = {("Kind" if k == kk else k): v for k, v in body.items()}
        nk = _key_of(out, "Name")
        if nk is not None and nk != "Name":
            out["Name"] = out.pop(nk)
        out.pop("CreateIndex", None)
        out.pop("ModifyIndex", None)
        name = out.get("Name") or ""
        if not name:
            raise ApiError(500, f"Name is required for a {kind} config entry")
        want = FIXED_NAMES.get(kind)
        if want and name != want:
            raise ApiError(500, f'invalid name "{name}", only "{want}" is supported')
        rest = {k: v for k, v in out.items() if k not in ("Kind", "Name")}
        # Normalize lower-cases service-defaults' Protocol and ingress listeners' (C:agent/structs/config_entry.go,
        # config_entry_ingress.go; http2-grpc.md §1.1); proxy-defaults' Config stays as written.
        pk = _key_of(rest, "Protocol")
        if kind == "service-defaults" and pk is not None and isinstance(rest[pk], str):
            rest[pk] = rest[pk].lower()
        lk = _key_of(rest, "Listeners")
        if kind == "ingress-gateway" and lk is not None and isinstance(rest[lk], list):
            for lst in rest[lk]:
                lpk = _key_of(lst, "Protocol") if isinstance(lst, dict) else None
                if lpk is not None and isinstance(lst[lpk], str):
                    lst[lpk] = lst[lpk].lower()
        return {"Kind": kind, "Name": name, **rest}

    def apply(self, body: Any, cas: int | None = None) -> bool:
        entry = self.normalize(body)
        key = (entry["Kind"], entry["Name"])
        prev = self.entries.get(key)
        if cas is not None and (prev["ModifyIndex"] if prev else 0) != cas:
            return False
        self._store(key, entry, prev)
        return True

    def _store(self, key: tuple[str, str], entry: dict[str, Any], prev: dict[str, Any] | None) -> None:
        idx = self.state.bump("config")
        entry["CreateIndex"] = prev["CreateIndex"] if prev else idx
        entry["ModifyIndex"] = idx
        self.entries[key] = entry

    def get(self, kind: str, name: str) -> dict[str, Any]:
        self._kind(kind)
        entry = self.entries.get((kind, name))
        if entry is None:
            raise ApiError(404, f'Config entry not found for "{kind}" / "{name}"')
        return entry

    def list(self, kind: str) -> list[dict[str, Any]]:
        self._kind(kind)
        return [e for (k, _), e in sorted(self.entries.items()) if k == kind]

    def delete(self, kind: str, name: str, cas: int | None = None) -> bool:
        self._kind(kind)
        prev = self.entries.get((kind, name))
        if cas is not None and (prev["ModifyIndex"] if prev else 0) != cas:
            return False
        if prev is not None:
            del self.entries[(kind, name)]
        self.state.bump("config")  # a delete is a write even when nothing was there
        return True

    @staticmethod
    def _kind(kind: str) -> None:
        if kind not in KINDS:
            raise ApiError(400, f"invalid config entry kind: {kind}")

    # ------------------------------------------------------------------ intentions

    def intentions(self) -> tuple[ServiceIntentions, ...]:
        return tuple(parse_entry(e, "stored", from_server=True) for e in self.list(KIND))

    @staticmethod
    def split(value: str | None, param: str) -> tuple[str, str]:
        if value is None:
            raise ApiError(500, f"required query parameter '{param}' not set")
        parts = value.split("/")
        if len(parts) > 3:
            raise ApiError(400, "input can contain at most two '/'")
        if len(parts) == 3:  # partition/ns/name: CE only knows the default partition
            parts = parts[1:]
        if len(parts) == 1:
            return DEFAULT_NAMESPACE, parts[0]
        return parts[0] or DEFAULT_NAMESPACE, parts[1]

    def _legacy(self, e: ServiceIntentions, s: SourceIntention) -> dict[str, Any]:
        raw = self.entries[(KIND, e.name)]
        out: dict[str, Any] = {}
        if s.legacy_id:
            out["ID"] = s.legacy_id
        out.update(
            {
                "Description": s.description,
                "SourceNS": s.namespace,
                "SourceName": s.name,
                "DestinationNS": e.namespace,
                "DestinationName": e.name,
                "SourceType": "consul",
            }
        )
        if s.action is not None:
            out["Action"] = s.action
        if s.permissions:
            out["Permissions"] = [p.to_json() for p in s.permissions]
        out.update({"Precedence": s.precedence, "CreateIndex": raw["CreateIndex"], "ModifyIndex": raw["ModifyIndex"]})
        return out

    def _find(self, src: tuple[str, str], dst: tuple[str, str]) -> tuple[ServiceIntentions, SourceIntention] | None:
        for e in self.intentions():
            if (e.namespace, e.name) == dst:
                for s in e.sources:
                    if not s.peer and (s.namespace, s.name) == src:
                        return e, s
        return None

    def exact_get(self, source: str | None, destination: str | None) -> dict[str, Any]:
        src, dst = self.split(source, "source"), self.split(destination, "destination")
        hit = self._find(src, dst)
        if hit is None:
            raise ApiError(404, "Intention not found")
        return self._legacy(*hit)

    def exact_put(self, source: str | None, destination: str | None, body: Any) -> None:
        src, dst = self.split(source, "source"), self.split(destination, "destination")
        if not isinstance(body, dict):
            raise ApiError(400, "Request decode failed: json: cannot unmarshal into Go value of type structs.Intention")
        f = {k.lower(): v for k, v in body.items() if isinstance(k, str) and v is not None}
        if f.get("meta"):
            raise ApiError(500, "Meta must not be specified")  # only legacy (UUID) intentions carry Meta
        new: dict[str, Any] = {"Name": src[1], "Type": f.get("sourcetype") or "consul"}
        if src[0] != dst[0]:
            new["Namespace"] = src[0]
        for k in ("Action", "Permissions", "Description"):
            if f.get(k.lower()):
                new[k] = f[k.lower()]
        prev = self.entries.get((KIND, dst[1]))
        sources = [
            s for s in (prev or {}).get("Sources", []) if (s.get("Namespace") or dst[0], s["Name"]) != (src[0], src[1])
        ]
        entry: dict[str, Any] = {"Kind": KIND, "Name": dst[1], "Sources": [*sources, new]}
        if dst[0] != DEFAULT_NAMESPACE:
            entry["Namespace"] = dst[0]
        if prev and prev.get("Meta"):
            entry["Meta"] = prev["Meta"]
        try:
            normalized = parse_entry(entry, "intention").to_json()
        except IntentionError as e:
            raise ApiError(500, str(e).replace("intention: ", "", 1)) from None
        self._store((KIND, dst[1]), normalized, prev)

    def exact_delete(self, source: str | None, destination: str | None) -> None:
        src, dst = self.split(source, "source"), self.split(destination, "destination")
        prev = self.entries.get((KIND, dst[1]))
        if prev is None or self._find(src, dst) is None:
            raise ApiError(404, "Intention not found")  # † text (consul.md §11.10)
        sources = [s for s in prev["Sources"] if (s.get("Namespace") or dst[0], s["Name"]) != src]
        if sources:
            self._store((KIND, dst[1]), {**prev, "Sources": sources}, prev)
        else:
            del self.entries[(KIND, dst[1])]  # the last source gone: the entry goes too
            self.state.bump("config")

    def list_intentions(self) -> list[dict[str, Any]]:
        entries = {(e.namespace, e.name): e for e in self.intentions()}
        return [
            self._legacy(entries[(ix.destination_ns, ix.destination)], ix.source) for ix in flatten(entries.values())
        ]

    def match(self, by: str | None, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        if by not in ("source", "destination"):
            raise ApiError(500, "'by' parameter must be one of 'source' or 'destination'")
        if not names:
            raise ApiError(500, "required query parameter 'name' not set")
        entries = self.intentions()
        out: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            ns, svc = self.split(name, "name")
            hits = []
            for e in entries:
                for s in e.sources:
                    ns_, nm = (e.namespace, e.name) if by == "destination" else (s.namespace, s.name)
                    if ns_ in (ns, WILDCARD) and nm in (svc, WILDCARD) and not s.peer:
                        hits.append((sort_key(s.namespace, s.name, e.namespace, e.name), self._legacy(e, s)))
            out[name] = [h for _, h in sorted(hits, key=lambda h: h[0])]
        return out

    def check(self, source: str | None, destination: str | None, source_type: str | None) -> bool:
        src, dst = self.split(source, "source"), self.split(destination, "destination")
        if source_type not in (None, "", "consul"):
            raise ApiError(400, f"unsupported SourceType: {source_type!r}")
        return check(self.intentions(), f"{src[0]}/{src[1]}", f"{dst[0]}/{dst[1]}", self.state.default_allow).allowed

    def authorize(self, target: str, src_ns: str, src: str) -> tuple[bool, str]:
        """Consul's AgentConnectAuthorize decision after the URI checks (consul.md §2.3): L7 means deny."""
        table = IntentionTable.build(self.intentions(), target, self.state.default_allow, DEFAULT_NAMESPACE)
        for ix in table.intentions:
            s = ix.source
            if not s.peer and s.namespace in (WILDCARD, src_ns) and s.name in (WILDCARD, src):
                text = (
                    f"{(s.action or '').upper()} {s.namespace}/{s.name} => {ix.destination_ns}/{ix.destination} (ID: )"
                )
                if s.is_l7:
                    return False, f"Matched L7 intention: {text}"
                return s.action == "allow", f"Matched L4 intention: {text}"
        return self.state.default_allow, "Default behavior configured by ACLs"
