"""Load atproto lexicons and validate values against them.

As in atproto's ``xrpc-server``, a method exists only if a lexicon declares it
as a ``query`` or a ``procedure``, and its HTTP verb comes from that kind. This
module knows nothing of HTTP or Redis: the XRPC layer routes by
:class:`MethodDef`, and turns :class:`~sidecar.errors.InvalidInput` into a 400.

The supported subset of Lexicon v1 (https://atproto.com/specs/lexicon):

- defs: ``query`` and ``procedure`` (with ``params``, input and output),
  ``record``, ``token``, and every value type below;
- values: ``object``, ``string``, ``integer``, ``boolean``, ``array``, ``ref``,
  ``union`` and ``unknown``;
- string formats: ``datetime``, ``record-key``, ``did``, ``handle``, ``nsid``
  and ``at-identifier``.

Anything else (``blob``, ``bytes``, another format, a ``subscription``...) is
refused when the lexicon is loaded, so no schema is ever half-checked in silence.

Error messages name the field path and the rule (``Input/name must be at most 64
characters``), never the offending value, so they are safe to show a caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from sidecar.errors import InvalidInput, LexiconError

__all__ = [
    "LexiconRegistry",
    "MethodDef",
    "default_lexicon_dir",
    "is_valid_nsid",
]


# nsid -> def name -> def, deeply read-only once loaded.
_Docs = Mapping[str, Mapping[str, Mapping[str, Any]]]

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
_FORMATS = frozenset({"datetime", "record-key", "did", "handle", "nsid", "at-identifier"})
_BODY_SCHEMA_TYPES = frozenset({"object", "ref", "union"})

# Every pattern is applied with ``fullmatch``: ``$`` would accept a trailing newline.
_NSID_RE = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_RECORD_KEY_RE = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
_DID_RE = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
_HANDLE_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.[0-9]{1,20})?"
    r"(Z|[+-][0-2][0-9]:[0-5][0-9])"
)
_INTEGER_PARAM_RE = re.compile(r"-?[0-9]{1,20}")
# A parameter name is echoed in an error only when it is short and plain.
_ECHOABLE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,40}")


def is_valid_nsid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid NSID (https://atproto.com/specs/nsid)."""
    if len(value) > 317 or not _NSID_RE.fullmatch(value):
        return False
    authority = value.rsplit(".", 1)[0]
    return len(authority) <= 253


def _is_datetime(value: str) -> bool:
    """Whether ``value`` is an atproto datetime: RFC 3339, upper-case ``T``, a timezone."""
    match = _DATETIME_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, offset = match.groups()
    # RFC 3339 reads -00:00 as "offset unknown"; atproto forbids it.
    if offset == "-00:00":
        return False
    tz = UTC
    if offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        try:
            tz = timezone(sign * delta)
        except ValueError:
            return False
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
        # Must also name a real instant in UTC (0001-01-01T00:00:00+01:00 does not).
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True


def _is_record_key(value: str) -> bool:
    return value not in {".", ".."} and _RECORD_KEY_RE.fullmatch(value) is not None


def _is_did(value: str) -> bool:
    return len(value) <= 2048 and _DID_RE.fullmatch(value) is not None


def _is_handle(value: str) -> bool:
    return len(value) <= 253 and _HANDLE_RE.fullmatch(value) is not None


_FORMAT_CHECKS: Mapping[str, tuple[Callable[[str], bool], str]] = {
    "datetime": (
        _is_datetime,
        "an RFC 3339 datetime with a timezone, like 2026-01-15T10:30:00.000Z",
    ),
    "record-key": (
        _is_record_key,
        "a valid record key: 1 to 512 of A-Z a-z 0-9 . _ : ~ - and not '.' or '..'",
    ),
    "did": (_is_did, "a valid DID"),
    "handle": (_is_handle, "a valid handle"),
    "nsid": (is_valid_nsid, "a valid NSID"),
    "at-identifier": (lambda v: _is_did(v) or _is_handle(v), "a valid DID or handle"),
}


def _is_int(value: object) -> bool:
    # bool is a subclass of int in Python, but true is not an integer in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def _kind_of(value: object) -> str:
    """The JSON name of a value's type, for messages that must not echo the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _utf8_length(value: str) -> int:
    # atproto counts string lengths in UTF-8 bytes; surrogatepass keeps a lone
    # surrogate from JSON (``"\ud800"``) countable instead of raising.
    return len(value.encode("utf-8", "surrogatepass"))


class _Invalid(Exception):
    """A value breaks its schema; converted to InvalidInput or LexiconError at the API edge."""


def _fail(message: str) -> NoReturn:
    raise _Invalid(message)


class _Schemas:
    """Every loaded def, with ref resolution and value validation."""

    def __init__(self, docs: _Docs) -> None:
        self._docs = docs

    def resolve(self, ref: str, context: str) -> tuple[str, Mapping[str, Any]]:
        """The nsid and def that ``ref``, written inside lexicon ``context``, points at."""
        nsid, name = _split_ref(ref, context)
        target = self._docs.get(nsid, {}).get(name)
        if target is None:
            raise LexiconError(f"{context}: unresolved ref {ref!r}")
        return nsid, target

    def check(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        """Raise ``_Invalid`` unless ``value`` matches ``schema`` (from lexicon ``context``)."""
        kind = schema["type"]
        if kind == "ref":
            nsid, target = self.resolve(schema["ref"], context)
            if target["type"] == "record":
                target = target["record"]
            self.check(target, value, path, nsid)
        elif kind == "union":
            self._check_union(schema, value, path, context)
        elif kind == "object":
            self._check_object(schema, value, path, context)
        elif kind == "array":
            self._check_array(schema, value, path, context)
        elif kind == "string":
            _check_string(schema, value, path)
        elif kind == "integer":
            _check_integer(schema, value, path)
        elif kind == "boolean":
            if not isinstance(value, bool):
                _fail(f"{path} must be a boolean, not {_kind_of(value)}")
            if "const" in schema and value is not schema["const"]:
                _fail(f"{path} must be {json.dumps(schema['const'])}")
        elif kind == "unknown":
            # Lexicon v1: an ``unknown`` value is any JSON object.
            if not isinstance(value, dict):
                _fail(f"{path} must be an object, not {_kind_of(value)}")
        else:  # pragma: no cover - load() admits no other type
            raise LexiconError(f"{context}: cannot validate type {kind!r}")

    def _check_object(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        if not isinstance(value, dict):
            _fail(f"{path} must be an object, not {_kind_of(value)}")
        for key in schema.get("required", ()):
            if key not in value:
                _fail(f'{path} must have the property "{key}"')
        nullable = schema.get("nullable", ())
        # Properties the schema does not name are allowed: atproto objects are open.
        for key, prop in schema.get("properties", {}).items():
            if key not in value or (value[key] is None and key in nullable):
                continue
            self.check(prop, value[key], f"{path}/{key}", context)

    def _check_array(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        if not isinstance(value, list | tuple):
            _fail(f"{path} must be an array, not {_kind_of(value)}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            _fail(f"{path} must have at least {schema['minLength']} items")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            _fail(f"{path} must have at most {schema['maxLength']} items")
        for index, item in enumerate(value):
            self.check(schema["items"], item, f"{path}/{index}", context)

    def _check_union(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
            _fail(f"{path} must be an object with a $type")
        refs = {"#".join(_split_ref(ref, context)): ref for ref in schema["refs"]}
        type_nsid, _, type_name = value["$type"].partition("#")
        chosen = refs.get(f"{type_nsid}#{type_name or 'main'}")
        if chosen is None:
            if schema.get("closed", False):
                _fail(f"{path} must have a $type of {_one_of(refs)}")
            return  # An open union admits types it does not know.
        nsid, target = self.resolve(chosen, context)
        if target["type"] == "record":
            target = target["record"]
        self.check(target, value, path, nsid)


def _one_of(choices: Iterable[object]) -> str:
    return "one of (" + "|".join(str(choice) for choice in choices) + ")"


def _check_string(schema: Mapping[str, Any], value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(f"{path} must be a string, not {_kind_of(value)}")
    if "const" in schema and value != schema["const"]:
        _fail(f"{path} must be {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        _fail(f"{path} must be {_one_of(schema['enum'])}")
    # For ASCII, bytes and characters agree; otherwise say which one is counted.
    unit = "characters" if value.isascii() else "bytes of UTF-8"
    size = _utf8_length(value)
    if "minLength" in schema and size < schema["minLength"]:
        _fail(f"{path} must be at least {schema['minLength']} {unit}")
    if "maxLength" in schema and size > schema["maxLength"]:
        _fail(f"{path} must be at most {schema['maxLength']} {unit}")
    # Graphemes are approximated by code points: exact counting needs a Unicode
    # segmentation library, and no lexicon of ours limits graphemes.
    if "minGraphemes" in schema and len(value) < schema["minGraphemes"]:
        _fail(f"{path} must be at least {schema['minGraphemes']} graphemes")
    if "maxGraphemes" in schema and len(value) > schema["maxGraphemes"]:
        _fail(f"{path} must be at most {schema['maxGraphemes']} graphemes")
    if "format" in schema:
        is_valid, description = _FORMAT_CHECKS[schema["format"]]
        if not is_valid(value):
            _fail(f"{path} must be {description}")


def _check_integer(schema: Mapping[str, Any], value: Any, path: str) -> None:
    if not _is_int(value):
        _fail(f"{path} must be an integer, not {_kind_of(value)}")
    if "const" in schema and value != schema["const"]:
        _fail(f"{path} must be {schema['const']}")
    if "enum" in schema and value not in schema["enum"]:
        _fail(f"{path} must be {_one_of(schema['enum'])}")
    if "minimum" in schema and value < schema["minimum"]:
        _fail(f"{path} must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        _fail(f"{path} must be at most {schema['maximum']}")


def _split_ref(ref: str, context: str) -> tuple[str, str]:
    """``(nsid, def name)`` of a ref: ``#name`` is local, a bare ``nsid`` means its main."""
    nsid, _, name = ref.partition("#")
    return (nsid or context), (name or "main")


@dataclass(frozen=True)
class MethodDef:
    """One XRPC method: the ``main`` def of a lexicon whose type is query or procedure."""

    nsid: str
    kind: Literal["query", "procedure"]
    http_method: str
    parameters: Mapping[str, Any] | None
    input_encoding: str | None
    input_schema: Mapping[str, Any] | None
    output_encoding: str | None
    output_schema: Mapping[str, Any] | None
    errors: frozenset[str]
    _schemas: _Schemas = field(
        default_factory=lambda: _Schemas(MappingProxyType({})), repr=False, compare=False
    )

    def validate_input(self, value: Any) -> None:
        """Raise InvalidInput unless ``value`` (the decoded body, or None) fits the input."""
        if self.input_encoding is None:
            if value is not None:
                raise InvalidInput("This method takes no input")
            return
        if self.input_schema is None:
            return
        try:
            self._schemas.check(self.input_schema, value, "Input", self.nsid)
        except _Invalid as exc:
            raise InvalidInput(str(exc)) from None

    def validate_output(self, value: Any) -> None:
        """Raise LexiconError unless ``value`` fits the output: a mismatch is our bug."""
        if self.output_encoding is None:
            if value is not None:
                raise LexiconError(f"{self.nsid} declares no output, yet one was produced")
            return
        if self.output_schema is None:
            return
        try:
            self._schemas.check(self.output_schema, value, "Output", self.nsid)
        except _Invalid as exc:
            raise LexiconError(f"{self.nsid} output breaks its lexicon: {exc}") from None

    def validate_params(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Coerce query parameters per the params def, with defaults; raise InvalidInput.

        Unknown or repeated parameters are refused, as is any parameter of a
        method without a params def. Integers are plain decimal, booleans are
        exactly ``true`` or ``false``.
        """
        properties: Mapping[str, Any] = {}
        required: Iterable[str] = ()
        if self.parameters is not None:
            properties = self.parameters.get("properties", {})
            required = self.parameters.get("required", ())
        result: dict[str, Any] = {}
        # items() rather than a dict copy, so a multidict's repeated names show up.
        for name, raw in params.items():
            if name not in properties:
                if _ECHOABLE_NAME_RE.fullmatch(name):
                    raise InvalidInput(f"Params/{name} is not a parameter of this method")
                raise InvalidInput("Params include a name that is not a parameter of this method")
            if name in result:
                raise InvalidInput(f"Params/{name} must be given at most once")
            result[name] = self._coerce_param(properties[name], raw, f"Params/{name}")
        for name in required:
            if name not in result:
                raise InvalidInput(f'Params must have the property "{name}"')
        for name, schema in properties.items():
            if name not in result and "default" in schema:
                result[name] = schema["default"]
        return result

    def _coerce_param(self, schema: Mapping[str, Any], raw: str, path: str) -> Any:
        value: Any = raw
        if schema["type"] == "integer":
            if not _INTEGER_PARAM_RE.fullmatch(raw):
                raise InvalidInput(f"{path} must be an integer")
            value = int(raw)
        elif schema["type"] == "boolean":
            if raw not in {"true", "false"}:
                raise InvalidInput(f"{path} must be true or false")
            value = raw == "true"
        try:
            self._schemas.check(schema, value, path, self.nsid)
        except _Invalid as exc:
            raise InvalidInput(str(exc)) from None
        return value


class LexiconRegistry:
    """Every loaded lexicon, and the XRPC methods they declare.

    Build one with :meth:`load` (or :meth:`from_documents`); both check every
    document and every ref before anything is served.
    """

    def __init__(self, docs: _Docs) -> None:
        """Wrap documents that ``_DocumentChecker`` already accepted and froze."""
        schemas = _Schemas(docs)
        methods: dict[str, MethodDef] = {}
        for nsid in sorted(docs):
            main = docs[nsid].get("main")
            if main is not None and main["type"] in {"query", "procedure"}:
                methods[nsid] = _method_def(nsid, main, schemas)
        self._methods = MappingProxyType(methods)

    @classmethod
    def load(cls, directory: Path) -> LexiconRegistry:
        """Load every ``*.json`` under ``directory``, recursively; raise LexiconError."""
        if not directory.is_dir():
            raise LexiconError(f"{directory}: lexicon directory not found")
        documents = []
        for path in sorted(directory.rglob("*.json")):
            try:
                text = path.read_text(encoding="utf-8")
                document = json.loads(
                    text, object_pairs_hook=_unique_keys, parse_constant=_no_constants
                )
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise LexiconError(f"{path}: not a readable JSON document: {exc}") from exc
            documents.append((str(path), document))
        return cls.from_documents(documents)

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, Any]]) -> LexiconRegistry:
        """Build from ``(source, parsed JSON)`` pairs; errors name the source."""
        checker = _DocumentChecker()
        for source, document in documents:
            checker.add(source, document)
        return cls(checker.finish())

    def get(self, nsid: str) -> MethodDef | None:
        """The method ``nsid``, or None if no lexicon declares it as query or procedure."""
        return self._methods.get(nsid)

    @property
    def methods(self) -> Mapping[str, MethodDef]:
        """Every method, by NSID, in NSID order."""
        return self._methods


def default_lexicon_dir() -> Path:
    """The lexicons bundled in an installed wheel, else those of the repo checkout."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "_lexicons"
    if bundled.is_dir():
        return bundled
    return package.parent / "lexicons"


def _method_def(nsid: str, main: Mapping[str, Any], schemas: _Schemas) -> MethodDef:
    kind: Literal["query", "procedure"] = "query" if main["type"] == "query" else "procedure"
    body_in = main.get("input")
    body_out = main.get("output")
    return MethodDef(
        nsid=nsid,
        kind=kind,
        http_method="GET" if kind == "query" else "POST",
        parameters=main.get("parameters"),
        input_encoding=body_in["encoding"] if body_in else None,
        input_schema=body_in.get("schema") if body_in else None,
        output_encoding=body_out["encoding"] if body_out else None,
        output_schema=body_out.get("schema") if body_out else None,
        errors=frozenset(error["name"] for error in main.get("errors", ())),
        _schemas=schemas,
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; in a schema that hides a mistake.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


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


class _DocumentChecker:
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

    def finish(self) -> _Docs:
        for source, where, context, ref, allowed in self._refs:
            nsid, name = _split_ref(ref, context)
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
                    context, target_name = _split_ref(definition["ref"], context)
                    if (context, target_name) in seen:
                        raise LexiconError(f"{self._sources[nsid]}: defs/{name}: refs form a cycle")
                    seen.add((context, target_name))
                    definition = self._docs[context][target_name]

    def _check_document(self, document: Any) -> None:
        _require(isinstance(document, dict), "document", "must be a JSON object")
        version = document.get("lexicon")
        _require(
            _is_int(version) and version == 1, "lexicon", "must be 1 (Lexicon v1 is supported)"
        )
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
                f"must be of type {_one_of(sorted(_PARAM_TYPES))}",
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
                f"must be of type {_one_of(sorted(_BODY_SCHEMA_TYPES))}",
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
            _require(fmt is None or fmt in _FORMATS, where, f"unsupported format {fmt!r}")
            self._check_sizes(
                schema, where, ("minLength", "maxLength", "minGraphemes", "maxGraphemes")
            )
            self._check_literals(schema, where, lambda v: isinstance(v, str), "a string")
            known = schema.get("knownValues", [])
            _require(_is_str_list(known), f"{where}/knownValues", "must be a list of strings")
        elif kind == "integer":
            for bound in ("minimum", "maximum"):
                if bound in schema:
                    _require(_is_int(schema[bound]), f"{where}/{bound}", "must be an integer")
            self._check_literals(schema, where, _is_int, "an integer")
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
                _require(_is_int(value) and value >= 0, f"{where}/{key}", "must be a whole number")

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
