"""Values checked against lexicon schemas: ``MethodDef`` validates a method's
params, input and output.

Error messages name the field path and the rule (``Input/name must be at most 64
characters``), never the offending value, so they are safe to show a caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from sidecar.errors import InvalidInput, LexiconError
from sidecar.xrpc.formats import FORMAT_CHECKS

# nsid -> def name -> def, deeply read-only once loaded.
Docs = Mapping[str, Mapping[str, Mapping[str, Any]]]

_INTEGER_PARAM_RE = re.compile(r"-?[0-9]{1,20}")
# A parameter name is echoed in an error only when it is short and plain.
_ECHOABLE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,40}")


def is_int(value: object) -> bool:
    # bool is a subclass of int in Python, but true is not an integer in JSON.
    return isinstance(value, int) and not isinstance(value, bool)


def kind_of(value: object) -> str:
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


class Invalid(Exception):
    """A value breaks its schema; converted to InvalidInput or LexiconError at the API edge."""


def _fail(message: str) -> NoReturn:
    raise Invalid(message)


class Schemas:
    """Every loaded def, with ref resolution and value validation."""

    def __init__(self, docs: Docs) -> None:
        self._docs = docs

    def resolve(self, ref: str, context: str) -> tuple[str, Mapping[str, Any]]:
        """The nsid and def that ``ref``, written inside lexicon ``context``, points at."""
        nsid, name = split_ref(ref, context)
        target = self._docs.get(nsid, {}).get(name)
        if target is None:
            raise LexiconError(f"{context}: unresolved ref {ref!r}")
        return nsid, target

    def check(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        """Raise ``Invalid`` unless ``value`` matches ``schema`` (from lexicon ``context``)."""
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
                _fail(f"{path} must be a boolean, not {kind_of(value)}")
            if "const" in schema and value is not schema["const"]:
                _fail(f"{path} must be {json.dumps(schema['const'])}")
        elif kind == "unknown":
            # Lexicon v1: an ``unknown`` value is any JSON object.
            if not isinstance(value, dict):
                _fail(f"{path} must be an object, not {kind_of(value)}")
        else:  # pragma: no cover - load() admits no other type
            raise LexiconError(f"{context}: cannot validate type {kind!r}")

    def _check_object(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        if not isinstance(value, dict):
            _fail(f"{path} must be an object, not {kind_of(value)}")
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
            _fail(f"{path} must be an array, not {kind_of(value)}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            _fail(f"{path} must have at least {schema['minLength']} items")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            _fail(f"{path} must have at most {schema['maxLength']} items")
        for index, item in enumerate(value):
            self.check(schema["items"], item, f"{path}/{index}", context)

    def _check_union(self, schema: Mapping[str, Any], value: Any, path: str, context: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
            _fail(f"{path} must be an object with a $type")
        refs = {"#".join(split_ref(ref, context)): ref for ref in schema["refs"]}
        type_nsid, _, type_name = value["$type"].partition("#")
        chosen = refs.get(f"{type_nsid}#{type_name or 'main'}")
        if chosen is None:
            if schema.get("closed", False):
                _fail(f"{path} must have a $type of {one_of(refs)}")
            return  # An open union admits types it does not know.
        nsid, target = self.resolve(chosen, context)
        if target["type"] == "record":
            target = target["record"]
        self.check(target, value, path, nsid)


def one_of(choices: Iterable[object]) -> str:
    return "one of (" + "|".join(str(choice) for choice in choices) + ")"


def _check_string(schema: Mapping[str, Any], value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(f"{path} must be a string, not {kind_of(value)}")
    if "const" in schema and value != schema["const"]:
        _fail(f"{path} must be {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        _fail(f"{path} must be {one_of(schema['enum'])}")
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
        is_valid, description = FORMAT_CHECKS[schema["format"]]
        if not is_valid(value):
            _fail(f"{path} must be {description}")


def _check_integer(schema: Mapping[str, Any], value: Any, path: str) -> None:
    if not is_int(value):
        _fail(f"{path} must be an integer, not {kind_of(value)}")
    if "const" in schema and value != schema["const"]:
        _fail(f"{path} must be {schema['const']}")
    if "enum" in schema and value not in schema["enum"]:
        _fail(f"{path} must be {one_of(schema['enum'])}")
    if "minimum" in schema and value < schema["minimum"]:
        _fail(f"{path} must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        _fail(f"{path} must be at most {schema['maximum']}")


def split_ref(ref: str, context: str) -> tuple[str, str]:
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
    _schemas: Schemas = field(
        default_factory=lambda: Schemas(MappingProxyType({})), repr=False, compare=False
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
        except Invalid as exc:
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
        except Invalid as exc:
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
        except Invalid as exc:
            raise InvalidInput(str(exc)) from None
        return value
