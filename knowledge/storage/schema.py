"""The typed property-graph schema: node types, edge types, their properties and how they evolve.

A schema change is validated here (pure functions, no I/O), written to the WAL as a record and
applied like data. Compatible changes: a new node or edge type, a new optional property, a new
allowed endpoint type, re-declaring something identically. Everything else raises SchemaError
and changes nothing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from knowledge.errors import SchemaError

SCALAR_TYPES = ("str", "text", "int", "float", "bool", "timestamp", "json", "list[str]")
VECTOR_METRICS = ("cosine", "ip", "l2")
VECTOR_DIMENSION_MAX = 8192
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
RESERVED_NODE_FIELDS = frozenset({"_id", "_labels", "_lsn", "_type", "_key"})
RESERVED_EDGE_FIELDS = frozenset({"src", "dst", "src_type", "dst_type", "_src", "_dst", "_lsn"})
_VECTOR = re.compile(r"^vector\[(\d+)\]$")


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SchemaError(f"{kind} name {name!r} must match {NAME_PATTERN.pattern}")
    return name


@dataclass(frozen=True, slots=True)
class Property:
    """One typed property. `dimension`/`metric` are set only for vector properties."""

    name: str
    type: str
    required: bool = False
    hidden: bool = False
    metric: str | None = None

    @property
    def dimension(self) -> int | None:
        return int(self.type[7:-1]) if self.type.startswith("vector[") else None  # validated at parse

    @property
    def is_vector(self) -> bool:
        return self.dimension is not None

    def arrow_type(self) -> pa.DataType:
        return arrow_type_of(self.type)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.required:
            out["required"] = True
        if self.hidden:
            out["hidden"] = True
        if self.metric:
            out["metric"] = self.metric
        return out


@functools.lru_cache(maxsize=256)
def arrow_type_of(type_name: str) -> pa.DataType:
    """The Arrow type that stores a property of `type_name`."""
    simple = {
        "str": pa.string(), "text": pa.string(), "int": pa.int64(), "float": pa.float64(),
        "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"), "json": pa.string(),
        "list[str]": pa.list_(pa.string()),
    }
    if type_name in simple:
        return simple[type_name]
    match = _VECTOR.match(type_name)
    if match:
        return pa.list_(pa.float32(), int(match.group(1)))
    raise SchemaError(f"unknown property type {type_name!r}; expected one of {', '.join(SCALAR_TYPES)} or vector[d]")


def parse_property(name: str, spec: str | dict[str, Any] | Property) -> Property:
    """A Property from `"int"`, `{"type": "vector[384]", "metric": "cosine"}` or a Property."""
    if isinstance(spec, Property):
        spec = spec.to_dict()
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise SchemaError(f"property {name!r}: expected a type name or a dict with 'type', got {spec!r}")
    unknown = set(spec) - {"type", "required", "hidden", "metric"}
    if unknown:
        raise SchemaError(f"property {name!r}: unknown option(s) {sorted(unknown)}")
    type_name = str(spec["type"]).strip().replace(" ", "")
    arrow_type_of(type_name)
    prop = Property(check_name("property", name), type_name, bool(spec.get("required", False)),
                    bool(spec.get("hidden", False)), spec.get("metric"))
    if prop.is_vector:
        dim = prop.dimension or 0
        if not 1 <= dim <= VECTOR_DIMENSION_MAX:
            raise SchemaError(f"property {name!r}: vector dimension {dim} outside 1..{VECTOR_DIMENSION_MAX}")
        prop = replace(prop, metric=prop.metric or "cosine")
        if prop.metric not in VECTOR_METRICS:
            raise SchemaError(f"property {name!r}: metric {prop.metric!r} not in {VECTOR_METRICS}")
    elif prop.metric is not None:
        raise SchemaError(f"property {name!r}: 'metric' applies only to vector properties")
    return prop


def _parse_properties(props: dict[str, Any] | None, reserved: frozenset[str]) -> dict[str, Property]:
    if props is not None and not isinstance(props, dict):
        raise SchemaError(f"properties must be a dict of property name -> type, got {type(props).__name__}")
    out = {}
    for name, spec in (props or {}).items():
        if name in reserved:
            raise SchemaError(f"property name {name!r} is reserved")
        out[name] = parse_property(name, spec)
    return out


@dataclass(frozen=True, slots=True)
class NodeType:
    """A node type: its key property (str or int, unique per type) and typed properties."""

    name: str
    key: str
    properties: dict[str, Property] = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, key: str, properties: dict[str, Any] | None = None) -> NodeType:
        props = _parse_properties(properties, RESERVED_NODE_FIELDS)
        if key not in props:
            props = {key: Property(check_name("key", key), "str", required=True), **props}
        key_prop = props[key]
        if key_prop.type not in ("str", "int"):
            raise SchemaError(f"node type {name!r}: key {key!r} must be str or int, not {key_prop.type}")
        props[key] = replace(key_prop, required=True)
        return cls(check_name("node type", name), key, props)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "properties": {n: p.to_dict() for n, p in self.properties.items()}}

    @property
    def vector_properties(self) -> list[Property]:
        return [p for p in self.properties.values() if p.is_vector]


@dataclass(frozen=True, slots=True)
class EdgeType:
    """An edge type: allowed source and target node types and typed properties. A `hidden` edge type, like a
    hidden property, does not exist for a non-admin: its edges are neither read, counted nor traversed."""

    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    properties: dict[str, Property] = field(default_factory=dict)
    hidden: bool = False

    @classmethod
    def build(cls, name: str, source: str | list[str], target: str | list[str],
              properties: dict[str, Any] | None = None, hidden: bool = False) -> EdgeType:
        sources = (source,) if isinstance(source, str) else tuple(source)
        targets = (target,) if isinstance(target, str) else tuple(target)
        if not sources or not targets:
            raise SchemaError(f"edge type {name!r} needs at least one source and one target type")
        if not isinstance(hidden, bool):
            raise SchemaError(f"edge type {name!r}: 'hidden' must be true or false, got {hidden!r}")
        return cls(check_name("edge type", name), sources, targets,
                   _parse_properties(properties, RESERVED_EDGE_FIELDS), hidden)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": list(self.sources), "target": list(self.targets),
                               "properties": {n: p.to_dict() for n, p in self.properties.items()}}
        if self.hidden:
            out["hidden"] = True
        return out


@dataclass(frozen=True, slots=True)
class Schema:
    """An immutable schema; changes produce a new Schema via `evolve`."""

    nodes: dict[str, NodeType] = field(default_factory=dict)
    edges: dict[str, EdgeType] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": {n: t.to_dict() for n, t in self.nodes.items()},
                "edges": {n: t.to_dict() for n, t in self.edges.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        schema = cls()
        return schema.evolve(data, populated=frozenset())

    def node_type(self, name: str) -> NodeType:
        return self.nodes[name]

    def property_change(self, type_name: str, name: str, spec: str | dict[str, Any]) -> dict[str, Any]:
        """The schema change that adds the optional property `name` (`spec`) to the node or edge type
        `type_name`, restating what must stay (a node type's key with its type, an edge type's endpoints)."""
        if type_name in self.nodes:
            node = self.nodes[type_name]
            key_spec = node.properties[node.key].to_dict()  # keeps an int key int
            return {"nodes": {type_name: {"key": node.key, "properties": {node.key: key_spec, name: spec}}}}
        if type_name in self.edges:
            edge = self.edges[type_name]
            return {"edges": {type_name: {"source": list(edge.sources), "target": list(edge.targets),
                                          "properties": {name: spec}}}}
        raise SchemaError(f"no node or edge type {type_name!r}")

    def evolve(self, change: dict[str, Any], populated: frozenset[str]) -> Schema:
        """Return the schema after `change` ({"nodes": {...}, "edges": {...}}) or raise SchemaError.

        `populated` names the types that hold rows (a required property cannot be added to those).
        """
        if not isinstance(change, dict):
            raise SchemaError(f"a schema change is a dict with 'nodes' and/or 'edges', got {type(change).__name__}")
        for section in ("nodes", "edges"):
            if not isinstance(change.get(section) or {}, dict):
                raise SchemaError(f"schema change {section!r} must be a dict of type name -> spec, got "
                                  f"{type(change[section]).__name__}")
        unknown = set(change) - {"nodes", "edges"}
        if unknown:
            raise SchemaError(f"schema change has unknown section(s) {sorted(unknown)}; use 'nodes' and 'edges'")
        nodes = dict(self.nodes)
        for name, spec in (change.get("nodes") or {}).items():
            new = _node_from_spec(name, spec)
            nodes[name] = _merge_node(nodes.get(name), new, name in populated)
        edges = dict(self.edges)
        for name, spec in (change.get("edges") or {}).items():
            if name in nodes:
                raise SchemaError(f"{name!r} is already a node type")
            new = _edge_from_spec(name, spec)
            for endpoint in new.sources + new.targets:
                if endpoint not in nodes:
                    raise SchemaError(f"edge type {name!r} names unknown node type {endpoint!r}")
            edges[name] = _merge_edge(edges.get(name), new)
        for name in nodes:
            if name in edges:
                raise SchemaError(f"{name!r} is already an edge type")
        return Schema(nodes, edges)


def _node_from_spec(name: str, spec: Any) -> NodeType:
    if isinstance(spec, NodeType):
        return spec
    if not isinstance(spec, dict) or "key" not in spec:
        raise SchemaError(f"node type {name!r}: expected a dict with 'key' and 'properties'")
    return NodeType.build(name, spec["key"], spec.get("properties"))


def _edge_from_spec(name: str, spec: Any) -> EdgeType:
    if isinstance(spec, EdgeType):
        return spec
    if not isinstance(spec, dict) or "source" not in spec or "target" not in spec:
        raise SchemaError(f"edge type {name!r}: expected a dict with 'source', 'target' and 'properties'")
    unknown = set(spec) - {"source", "target", "properties", "hidden"}
    if unknown:
        raise SchemaError(f"edge type {name!r}: unknown option(s) {sorted(unknown)}; expected source, target, "
                          f"properties, hidden")
    return EdgeType.build(name, spec["source"], spec["target"], spec.get("properties"), spec.get("hidden", False))


def _merge_properties(owner: str, old: dict[str, Property], new: dict[str, Property],
                      populated: bool) -> dict[str, Property]:
    merged = dict(old)
    for name, prop in new.items():
        if name in old:
            if old[name] != prop:
                raise SchemaError(f"{owner}: property {name!r} is {old[name].to_dict()}; changing it to "
                                  f"{prop.to_dict()} is incompatible")
            continue
        if prop.required and populated:
            raise SchemaError(f"{owner}: cannot add required property {name!r} to a type that holds rows; "
                              f"add it as optional")
        merged[name] = prop
    return merged


def _merge_node(old: NodeType | None, new: NodeType, populated: bool) -> NodeType:
    if old is None:
        return new
    if old.key != new.key:
        raise SchemaError(f"node type {new.name!r}: key is {old.key!r}; changing it to {new.key!r} is incompatible")
    return NodeType(old.name, old.key, _merge_properties(f"node type {new.name!r}", old.properties,
                                                         new.properties, populated))


def _merge_edge(old: EdgeType | None, new: EdgeType) -> EdgeType:
    if old is None:
        return new
    sources = old.sources + tuple(s for s in new.sources if s not in old.sources)
    targets = old.targets + tuple(t for t in new.targets if t not in old.targets)
    # hiding is one-way: a change may hide an edge type, and one that omits `hidden` leaves it hidden
    return EdgeType(old.name, sources, targets,
                    _merge_properties(f"edge type {new.name!r}", old.properties, new.properties, True),
                    old.hidden or new.hidden)
