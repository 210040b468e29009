"""The lexicon document checker: every document, def and ref is checked against the
supported subset of Lexicon v1 (listed in ``lexicon``) before anything is served,
and the accepted documents are frozen.

Anything it does not know is refused with the document's source and the place in
it, so no schema is ever half-checked in silence.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sidecar.errors import LexiconError
from sidecar.xrpc.formats import FORMATS, is_valid_nsid
from sidecar.xrpc.schemas import Docs, is_int, one_of, split_ref

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

_VALUE_TYPES = frozenset(
    {"object", "string", "integer", "boolean", "array", "ref", "union", "unknown"}
)
_MAIN_ONLY_TYPES = frozenset({"query", "procedure", "record"})
_DEF_TYPES = _VALUE_TYPES | _MAIN_ONLY_TYPES | {"token"}
# What a ``ref`` may point at; a ref to a record means its ``record`` object.
_REF_TARGET_TYPES = _VALUE_TYPES | {"record"}
_UNION_TARGET_TYPES = frozenset({"object", "record"})
# A ``Mapping[str, str]`` carries one value per name, so params stay scalar.
_PARAM_TYPES = frozenset({"string", "integer", "boolean"})
_BODY_SCHEMA_TYPES = frozenset({"object", "ref", "union"})


def _freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become proxies, lists become tuples."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


class _Malformed(Exception):
    """One problem in one document; the checker prefixes the source."""


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise _Malformed(f"{where}: {message}")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class DocumentChecker:
    """Checks lexicon documents one by one, then the refs between them."""

    def __init__(self) -> None:
        self._sources: dict[str, str] = {}
        self._docs: dict[str, dict[str, Any]] = {}
        # (source, where, context nsid, ref, allowed target types)
        self._refs: list[tuple[str, str, str, str, frozenset[str]]] = []
        self._source = ""
        self._nsid = ""

    def add(self, source: str, document: Any) -> None:
        self._source = source
        try:
            self._check_document(document)
        except _Malformed as exc:
            raise LexiconError(f"{source}: {exc}") from None

    def finish(self) -> Docs:
        for source, where, context, ref, allowed in self._refs:
            nsid, name = split_ref(ref, context)
            target = self._docs.get(nsid, {}).get(name)
            if target is None:
                raise LexiconError(f"{source}: {where}: ref {ref!r} resolves to nothing")
            if target["type"] not in allowed:
                raise LexiconError(
                    f"{source}: {where}: ref {ref!r} points at a {target['type']!r} def"
                )
        self._check_ref_cycles()
        return MappingProxyType({nsid: _freeze(defs) for nsid, defs in sorted(self._docs.items())})

    def _check_ref_cycles(self) -> None:
        # Only defs that are themselves bare refs can chain without consuming data.
        for nsid, defs in self._docs.items():
            for name, definition in defs.items():
                seen = {(nsid, name)}
                context = nsid
                while definition["type"] == "ref":
                    context, target_name = split_ref(definition["ref"], context)
                    if (context, target_name) in seen:
                        raise LexiconError(f"{self._sources[nsid]}: defs/{name}: refs form a cycle")
                    seen.add((context, target_name))
                    definition = self._docs[context][target_name]

    def _check_document(self, document: Any) -> None:
        _require(isinstance(document, dict), "document", "must be a JSON object")
        version = document.get("lexicon")
        _require(is_int(version) and version == 1, "lexicon", "must be 1 (Lexicon v1 is supported)")
        nsid = document.get("id")
        _require(isinstance(nsid, str) and is_valid_nsid(nsid), "id", "must be a valid NSID")
        if nsid in self._sources:
            raise _Malformed(f"id {nsid!r} is already defined by {self._sources[nsid]}")
        defs = document.get("defs")
        _require(isinstance(defs, dict) and bool(defs), "defs", "must be a non-empty object")
        self._nsid = nsid
        for name, definition in defs.items():
            self._check_def(name, definition)
        self._sources[nsid] = self._source
        self._docs[nsid] = defs

    def _check_def(self, name: str, definition: Any) -> None:
        where = f"defs/{name}"
        _require(isinstance(definition, dict), where, "must be an object")
        kind = definition.get("type")
        _require(kind in _DEF_TYPES, where, f"unsupported def type {kind!r}")
        if kind in _MAIN_ONLY_TYPES:
            _require(name == "main", where, f"a {kind} must be the main def")
        if kind in {"query", "procedure"}:
            self._check_method(definition, where)
        elif kind == "record":
            _require(isinstance(definition.get("key", ""), str), f"{where}/key", "must be a string")
            record = definition.get("record")
            _require(
                isinstance(record, dict) and record.get("type") == "object",
                f"{where}/record",
                "must be an object schema",
            )
            self._check_schema(record, f"{where}/record")
        elif kind != "token":
            self._check_schema(definition, where)

    def _check_method(self, definition: Mapping[str, Any], where: str) -> None:
        if "parameters" in definition:
            self._check_params(definition["parameters"], f"{where}/parameters")
        if definition["type"] == "query":
            _require("input" not in definition, f"{where}/input", "a query takes no input")
        for body in ("input", "output"):
            if body in definition:
                self._check_body(definition[body], f"{where}/{body}")
        errors = definition.get("errors", [])
        _require(
            isinstance(errors, list)
            and all(
                isinstance(error, dict) and isinstance(error.get("name"), str) for error in errors
            ),
            f"{where}/errors",
            "must be a list of objects with a string name",
        )

    def _check_params(self, params: Any, where: str) -> None:
        _require(
            isinstance(params, dict) and params.get("type") == "params",
            where,
            'must be a def of type "params"',
        )
        properties = params.get("properties", {})
        _require(isinstance(properties, dict), f"{where}/properties", "must be an object")
        for key, prop in properties.items():
            prop_where = f"{where}/properties/{key}"
            _require(
                isinstance(prop, dict) and prop.get("type") in _PARAM_TYPES,
                prop_where,
                f"must be of type {one_of(sorted(_PARAM_TYPES))}",
            )
            self._check_schema(prop, prop_where)
        self._check_key_list(params, "required", properties, where)

    def _check_body(self, body: Any, where: str) -> None:
        _require(isinstance(body, dict), where, "must be an object")
        _require(isinstance(body.get("encoding"), str), f"{where}/encoding", "must be a string")
        if "schema" in body:
            schema = body["schema"]
            _require(
                isinstance(schema, dict) and schema.get("type") in _BODY_SCHEMA_TYPES,
                f"{where}/schema",
                f"must be of type {one_of(sorted(_BODY_SCHEMA_TYPES))}",
            )
            self._check_schema(schema, f"{where}/schema")

    def _check_key_list(
        self, schema: Mapping[str, Any], key: str, properties: Mapping[str, Any], where: str
    ) -> None:
        names = schema.get(key, [])
        _require(_is_str_list(names), f"{where}/{key}", "must be a list of strings")
        for name in names:
            _require(name in properties, f"{where}/{key}", f"names {name!r}, not a property")

    def _check_schema(self, schema: Any, where: str) -> None:
        """Check a value schema: a known type with well-formed constraints."""
        _require(isinstance(schema, dict), where, "must be an object")
        kind = schema.get("type")
        _require(kind in _VALUE_TYPES, where, f"unsupported type {kind!r}")
        if kind == "object":
            properties = schema.get("properties", {})
            _require(isinstance(properties, dict), f"{where}/properties", "must be an object")
            for key, prop in properties.items():
                self._check_schema(prop, f"{where}/properties/{key}")
            self._check_key_list(schema, "required", properties, where)
            self._check_key_list(schema, "nullable", properties, where)
        elif kind == "array":
            _require("items" in schema, where, "an array needs items")
            self._check_schema(schema["items"], f"{where}/items")
            self._check_sizes(schema, where, ("minLength", "maxLength"))
        elif kind == "string":
            fmt = schema.get("format")
            _require(fmt is None or fmt in FORMATS, where, f"unsupported format {fmt!r}")
            self._check_sizes(
                schema, where, ("minLength", "maxLength", "minGraphemes", "maxGraphemes")
            )
            self._check_literals(schema, where, lambda v: isinstance(v, str), "a string")
            known = schema.get("knownValues", [])
            _require(_is_str_list(known), f"{where}/knownValues", "must be a list of strings")
        elif kind == "integer":
            for bound in ("minimum", "maximum"):
                if bound in schema:
                    _require(is_int(schema[bound]), f"{where}/{bound}", "must be an integer")
            self._check_literals(schema, where, is_int, "an integer")
        elif kind == "boolean":
            self._check_literals(schema, where, lambda v: isinstance(v, bool), "a boolean")
        elif kind == "ref":
            ref = schema.get("ref")
            _require(self._is_ref(ref), f"{where}/ref", "must be '#def', 'nsid' or 'nsid#def'")
            self._refs.append((self._source, where, self._nsid, ref, _REF_TARGET_TYPES))
        elif kind == "union":
            refs = schema.get("refs")
            _require(
                isinstance(refs, list) and all(self._is_ref(ref) for ref in refs),
                f"{where}/refs",
                "must be a list of '#def', 'nsid' or 'nsid#def'",
            )
            closed = schema.get("closed", False)
            _require(isinstance(closed, bool), f"{where}/closed", "must be a boolean")
            for ref in refs:
                self._refs.append((self._source, where, self._nsid, ref, _UNION_TARGET_TYPES))

    @staticmethod
    def _is_ref(ref: Any) -> bool:
        if not isinstance(ref, str):
            return False
        nsid, hash_sign, name = ref.partition("#")
        if nsid and not is_valid_nsid(nsid):
            return False
        return bool(name) if hash_sign else bool(nsid)

    @staticmethod
    def _check_sizes(schema: Mapping[str, Any], where: str, keys: Iterable[str]) -> None:
        for key in keys:
            if key in schema:
                value = schema[key]
                _require(is_int(value) and value >= 0, f"{where}/{key}", "must be a whole number")

    @staticmethod
    def _check_literals(
        schema: Mapping[str, Any], where: str, fits: Callable[[Any], bool], kind: str
    ) -> None:
        for key in ("const", "default"):
            if key in schema:
                _require(fits(schema[key]), f"{where}/{key}", f"must be {kind}")
        if "enum" in schema:
            enum = schema["enum"]
            _require(
                isinstance(enum, list) and all(fits(item) for item in enum),
                f"{where}/enum",
                f"must be a list, each item {kind}",
            )
