"""Tests for sidecar.xrpc.lexicon: loading lexicons and validating values against them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from multidict import MultiDict

from sidecar.errors import InvalidInput, LexiconError, SidecarError
from sidecar.xrpc.formats import is_valid_nsid
from sidecar.xrpc.lexicon import LexiconRegistry, default_lexicon_dir
from sidecar.xrpc.schemas import MethodDef

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "place.wisp.v2.secret"
GOOD_TIME = "2026-01-15T10:30:00.000Z"

ROTATE_LEXICON = {
    "lexicon": 1,
    "id": "place.wisp.v2.secret.rotate",
    "defs": {
        "main": {
            "type": "procedure",
            "description": (
                "Rotate a webhook signing secret, generating a new token. The old token stops "
                "working immediately. The new token is only returned in this response."
            ),
            "input": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {
                            "type": "string",
                            "format": "record-key",
                            "maxLength": 64,
                            "description": (
                                # The lexicon's own text has an en dash.
                                "1–64 character secret ID: ASCII letters, digits, dots, "  # noqa: RUF001
                                "underscores and hyphens."
                            ),
                        }
                    },
                },
            },
            "output": {
                "encoding": "application/json",
                "schema": {
                    "type": "object",
                    "required": ["name", "token", "rotatedAt"],
                    "properties": {
                        "name": {"type": "string"},
                        "token": {
                            "type": "string",
                            "description": (
                                "The new signing token. Only returned here — store it now."
                            ),
                        },
                        "rotatedAt": {"type": "string", "format": "datetime"},
                    },
                },
            },
            "errors": [
                {"name": "AuthenticationRequired"},
                {"name": "InvalidRequest"},
                {"name": "NotFound"},
            ],
        }
    },
}


@pytest.fixture(scope="module")
def registry() -> LexiconRegistry:
    """The registry of the repository's real lexicons."""
    return LexiconRegistry.load(default_lexicon_dir())


def method(registry: LexiconRegistry, nsid: str) -> MethodDef:
    """The method ``nsid``, which must exist."""
    found = registry.get(nsid)
    assert found is not None, nsid
    return found


def write(directory: Path, filename: str, document: Any) -> Path:
    """Write ``document`` as JSON (or verbatim, if a str) to ``directory/filename``."""
    path = directory / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def procedure(nsid: str, schema: dict[str, Any], **extra_defs: Any) -> dict[str, Any]:
    """A lexicon whose main procedure takes ``schema`` as input and returns it as output."""
    body = {"encoding": "application/json", "schema": schema}
    main = {"type": "procedure", "input": body, "output": body}
    return {"lexicon": 1, "id": nsid, "defs": {"main": main, **extra_defs}}


def query(nsid: str, params: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A lexicon whose main query takes ``params``."""
    parameters: dict[str, Any] = {"type": "params", "properties": params}
    if required is not None:
        parameters["required"] = required
    main = {"type": "query", "parameters": parameters}
    return {"lexicon": 1, "id": nsid, "defs": {"main": main}}


def load_one(tmp_path: Path, document: dict[str, Any]) -> MethodDef:
    """Load ``document`` alone and return its main method."""
    write(tmp_path, "doc.json", document)
    return method(LexiconRegistry.load(tmp_path), document["id"])


# --- the real lexicons -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "http_method", "errors"),
    [
        (
            "create",
            "procedure",
            "POST",
            frozenset(
                {
                    "AuthenticationRequired",
                    "InvalidRequest",
                    "AlreadyExists",
                    "SecretQuotaExceeded",
                    "WebhookSecretEncryptionUnavailable",
                    "StorageUnavailable",
                }
            ),
        ),
        (
            "list",
            "query",
            "GET",
            frozenset({"AuthenticationRequired", "InvalidRequest", "StorageUnavailable"}),
        ),
        (
            "rotate",
            "procedure",
            "POST",
            frozenset({"AuthenticationRequired", "InvalidRequest", "NotFound"}),
        ),
        (
            "delete",
            "procedure",
            "POST",
            frozenset(
                {"AuthenticationRequired", "InvalidRequest", "NotFound", "StorageUnavailable"}
            ),
        ),
    ],
)
def test_real_lexicons_declare_the_four_methods(
    registry: LexiconRegistry, name: str, kind: str, http_method: str, errors: frozenset[str]
) -> None:
    """Each secret method exists with its kind, HTTP verb and declared errors."""
    found = method(registry, f"{SECRET}.{name}")
    assert (found.kind, found.http_method, found.errors) == (kind, http_method, errors)


def test_real_lexicons_declare_nothing_else(registry: LexiconRegistry) -> None:
    """The real lexicons declare exactly the four secret methods."""
    assert sorted(registry.methods) == [
        f"{SECRET}.{name}" for name in ("create", "delete", "list", "rotate")
    ]


def test_rotate_lexicon_is_verbatim() -> None:
    """rotate.json holds exactly the agreed document."""
    path = default_lexicon_dir() / "place" / "wisp" / "v2" / "secret" / "rotate.json"
    assert json.loads(path.read_text(encoding="utf-8")) == ROTATE_LEXICON


def test_list_has_no_input(registry: LexiconRegistry) -> None:
    """list declares no input, so any body is refused, and only the params limit and cursor."""
    listing = method(registry, f"{SECRET}.list")
    assert (listing.input_encoding, listing.input_schema) == (None, None)
    assert listing.parameters is not None
    assert set(listing.parameters["properties"]) == {"limit", "cursor"}
    assert listing.validate_params({}) == {"limit": 100}
    listing.validate_input(None)
    with pytest.raises(InvalidInput, match="takes no input"):
        listing.validate_input({})


def test_delete_output_is_an_empty_object(registry: LexiconRegistry) -> None:
    """delete answers JSON, and {} satisfies its output while a non-object does not."""
    delete = method(registry, f"{SECRET}.delete")
    assert delete.output_encoding == "application/json"
    delete.validate_output({})
    with pytest.raises(LexiconError, match="Output must be an object"):
        delete.validate_output([])


def test_default_lexicon_dir_is_the_checkout_copy() -> None:
    """Run from a checkout, the default directory is the repository's lexicons/."""
    directory = default_lexicon_dir()
    assert directory.name == "lexicons"
    assert (directory / "place" / "wisp" / "v2" / "secret" / "create.json").is_file()


# --- input validation --------------------------------------------------------------


@pytest.mark.parametrize("nsid", [f"{SECRET}.create", f"{SECRET}.rotate", f"{SECRET}.delete"])
@pytest.mark.parametrize("name", ["a", "my-secret_1.v2", "A" * 64, "...", "-"])
def test_input_accepts_good_names(registry: LexiconRegistry, nsid: str, name: str) -> None:
    """Names of 1 to 64 ASCII letters, digits, dots, underscores and hyphens pass."""
    method(registry, nsid).validate_input({"name": name})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, 'Input must have the property "name"'),
        ({"name": 7}, "Input/name must be a string, not integer"),
        ({"name": None}, "Input/name must be a string, not null"),
        ({"name": "a" * 65}, "Input/name must be at most 64 characters"),
        ({"name": "."}, "Input/name must be a valid record key"),
        ({"name": ".."}, "Input/name must be a valid record key"),
        ({"name": ""}, "Input/name must be a valid record key"),
        ({"name": "é"}, "Input/name must be a valid record key"),
        ({"name": "a b"}, "Input/name must be a valid record key"),
        ({"name": "a\n"}, "Input/name must be a valid record key"),
        ([{"name": "a"}], "Input must be an object, not array"),
        ("a", "Input must be an object, not string"),
        (None, "Input must be an object, not null"),
    ],
)
def test_input_rejects_bad_names(registry: LexiconRegistry, value: Any, message: str) -> None:
    """A missing, mistyped, over-long, dot-only or non-ASCII name is InvalidInput saying why."""
    with pytest.raises(InvalidInput) as caught:
        method(registry, f"{SECRET}.rotate").validate_input(value)
    assert str(caught.value).startswith(message)


def test_input_allows_unknown_properties(registry: LexiconRegistry) -> None:
    """Objects are open, as in atproto: properties the schema does not name pass."""
    method(registry, f"{SECRET}.create").validate_input({"name": "a", "extra": [1, 2]})


def test_messages_never_echo_the_value(registry: LexiconRegistry) -> None:
    """An error names the field and the rule, never the caller's (possibly huge) value."""
    with pytest.raises(InvalidInput) as caught:
        method(registry, f"{SECRET}.rotate").validate_input({"name": "Z" * 10_000})
    assert "ZZ" not in str(caught.value)
    assert len(str(caught.value)) < 200


# --- output validation and refs ----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        GOOD_TIME,
        "2026-01-15T10:30:00Z",
        "2026-01-15T10:30:00.123456789+05:30",
        "2024-02-29T23:59:59.999-08:00",
    ],
)
def test_datetime_accepts_rfc3339_with_timezone(registry: LexiconRegistry, value: str) -> None:
    """RFC 3339 datetimes with an upper-case T and a timezone pass."""
    output = {"name": "a", "token": "t", "rotatedAt": value}
    method(registry, f"{SECRET}.rotate").validate_output(output)


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-15 10:30:00",
        "2026-01-15T10:30:00",
        "2026-01-15t10:30:00Z",
        "2026-01-15T10:30:00z",
        "2026-01-15T10:30:00-00:00",
        "2026-01-15T10:30:00+0530",
        "2026-13-15T10:30:00Z",
        "2025-02-29T10:30:00Z",
        "2026-01-15T24:00:00Z",
        "2026-01-15T10:30:00Z\n",
        "2026-01-15",
    ],
)
def test_datetime_rejects_everything_else(registry: LexiconRegistry, value: str) -> None:
    """No timezone, a space or lower-case separator, -00:00 or an impossible date all fail."""
    output = {"name": "a", "token": "t", "rotatedAt": value}
    with pytest.raises(LexiconError, match="Output/rotatedAt must be an RFC 3339 datetime"):
        method(registry, f"{SECRET}.rotate").validate_output(output)


@pytest.mark.parametrize(
    "secrets",
    [
        [],
        [{"name": "a", "createdAt": GOOD_TIME}],
        [{"name": "a", "createdAt": GOOD_TIME, "lastRotatedAt": GOOD_TIME}],
    ],
)
def test_list_output_accepts_metadata(registry: LexiconRegistry, secrets: list[Any]) -> None:
    """list output passes with and without lastRotatedAt."""
    method(registry, f"{SECRET}.list").validate_output({"secrets": secrets})


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (
            {"name": "a", "createdAt": GOOD_TIME, "lastRotatedAt": None},
            "Output/secrets/0/lastRotatedAt must be a string, not null",
        ),
        ({"name": "a"}, 'Output/secrets/0 must have the property "createdAt"'),
        ({"name": "a", "createdAt": "yesterday"}, "Output/secrets/0/createdAt must be an RFC"),
    ],
)
def test_list_output_rejects_bad_metadata(
    registry: LexiconRegistry, secret: dict[str, Any], message: str
) -> None:
    """A null lastRotatedAt, a missing createdAt or a bad datetime fail via the #secretMeta ref."""
    with pytest.raises(LexiconError, match=message):
        method(registry, f"{SECRET}.list").validate_output({"secrets": [secret]})


def test_output_errors_are_our_bug_not_the_callers(registry: LexiconRegistry) -> None:
    """A bad output raises LexiconError, a SidecarError that is not InvalidInput."""
    assert issubclass(LexiconError, SidecarError)
    assert not issubclass(LexiconError, InvalidInput)
    with pytest.raises(LexiconError, match=f"{SECRET}.create output"):
        method(registry, f"{SECRET}.create").validate_output({"name": "a"})


def test_refs_resolve_across_lexicons(tmp_path: Path) -> None:
    """A ref of the form nsid#def resolves into another lexicon and validates there."""
    write(
        tmp_path,
        "a.json",
        procedure("com.example.a", {"type": "ref", "ref": "com.example.b#thing"}),
    )
    thing = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    write(tmp_path, "sub/b.json", {"lexicon": 1, "id": "com.example.b", "defs": {"thing": thing}})
    a = method(LexiconRegistry.load(tmp_path), "com.example.a")
    a.validate_input({"n": 1})
    with pytest.raises(InvalidInput, match="Input/n must be an integer"):
        a.validate_input({"n": "1"})


def test_record_only_lexicons_are_not_methods(tmp_path: Path) -> None:
    """A lexicon whose main is a record loads but is not a method."""
    record = {"type": "record", "key": "tid", "record": {"type": "object", "properties": {}}}
    write(tmp_path, "r.json", {"lexicon": 1, "id": "com.example.rec", "defs": {"main": record}})
    loaded = LexiconRegistry.load(tmp_path)
    assert loaded.get("com.example.rec") is None
    assert dict(loaded.methods) == {}


# --- the value types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "Input/n must be an integer, not boolean"),
        (1.0, "Input/n must be an integer, not number"),
        ("1", "Input/n must be an integer, not string"),
        (0, "Input/n must be at least 1"),
        (11, "Input/n must be at most 10"),
    ],
)
def test_integer_rejects_bools_floats_and_bounds(tmp_path: Path, value: Any, message: str) -> None:
    """bool and float are not integers, and minimum/maximum hold."""
    n = {"type": "integer", "minimum": 1, "maximum": 10}
    m = load_one(tmp_path, procedure("com.example.n", {"type": "object", "properties": {"n": n}}))
    m.validate_input({"n": 10})
    with pytest.raises(InvalidInput, match=message):
        m.validate_input({"n": value})


def test_string_lengths_count_utf8_bytes(tmp_path: Path) -> None:
    """minLength/maxLength count UTF-8 bytes, so three 2-byte characters exceed 4."""
    s = {"type": "string", "minLength": 2, "maxLength": 4}
    m = load_one(tmp_path, procedure("com.example.s", {"type": "object", "properties": {"s": s}}))
    m.validate_input({"s": "aaaa"})
    m.validate_input({"s": "éé"})
    with pytest.raises(InvalidInput, match="Input/s must be at most 4 bytes of UTF-8"):
        m.validate_input({"s": "ééé"})
    with pytest.raises(InvalidInput, match="Input/s must be at least 2 characters"):
        m.validate_input({"s": "a"})


def test_string_enum_and_boolean(tmp_path: Path) -> None:
    """A string enum admits only its values, and a boolean only true or false."""
    props = {"e": {"type": "string", "enum": ["x", "y"]}, "b": {"type": "boolean"}}
    m = load_one(tmp_path, procedure("com.example.e", {"type": "object", "properties": props}))
    m.validate_input({"e": "y", "b": False})
    with pytest.raises(InvalidInput, match=r"Input/e must be one of \(x\|y\)"):
        m.validate_input({"e": "z"})
    with pytest.raises(InvalidInput, match="Input/b must be a boolean, not integer"):
        m.validate_input({"b": 0})


def test_nullable_properties_accept_null(tmp_path: Path) -> None:
    """A property listed in nullable may be null; the same property elsewhere may not."""
    props = {"a": {"type": "string"}, "b": {"type": "string"}}
    schema = {"type": "object", "required": ["a"], "nullable": ["a"], "properties": props}
    m = load_one(tmp_path, procedure("com.example.null", schema))
    m.validate_input({"a": None})
    with pytest.raises(InvalidInput, match="Input/b must be a string, not null"):
        m.validate_input({"a": None, "b": None})


def test_array_items_and_length(tmp_path: Path) -> None:
    """Arrays check each item by index and their item count."""
    xs = {"type": "array", "items": {"type": "integer"}, "minLength": 1, "maxLength": 2}
    m = load_one(
        tmp_path, procedure("com.example.arr", {"type": "object", "properties": {"xs": xs}})
    )
    m.validate_input({"xs": [1, 2]})
    with pytest.raises(InvalidInput, match="Input/xs/1 must be an integer"):
        m.validate_input({"xs": [1, "2"]})
    with pytest.raises(InvalidInput, match="Input/xs must have at most 2 items"):
        m.validate_input({"xs": [1, 2, 3]})
    with pytest.raises(InvalidInput, match="Input/xs must have at least 1 items"):
        m.validate_input({"xs": []})


@pytest.mark.parametrize("closed", [True, False])
def test_unions_pick_the_def_named_by_type(tmp_path: Path, closed: bool) -> None:
    """A union validates against its $type's def; an unknown $type passes only if open."""
    cat = {"type": "object", "required": ["lives"], "properties": {"lives": {"type": "integer"}}}
    union = {"type": "union", "refs": ["#cat"], "closed": closed}
    schema = {"type": "object", "properties": {"pet": union}}
    m = load_one(tmp_path, procedure("com.example.pets", schema, cat=cat))
    m.validate_input({"pet": {"$type": "com.example.pets#cat", "lives": 9}})
    with pytest.raises(InvalidInput, match='Input/pet must have the property "lives"'):
        m.validate_input({"pet": {"$type": "com.example.pets#cat"}})
    with pytest.raises(InvalidInput, match=r"Input/pet must be an object with a \$type"):
        m.validate_input({"pet": {"lives": 9}})
    dog = {"pet": {"$type": "com.example.pets#dog"}}
    if closed:
        with pytest.raises(InvalidInput, match=r"Input/pet must have a \$type of one of"):
            m.validate_input(dog)
    else:
        m.validate_input(dog)


def test_unknown_must_be_an_object(tmp_path: Path) -> None:
    """An unknown value is any object, and nothing else."""
    schema = {"type": "object", "properties": {"u": {"type": "unknown"}}}
    m = load_one(tmp_path, procedure("com.example.unk", schema))
    m.validate_input({"u": {"anything": [1]}})
    with pytest.raises(InvalidInput, match="Input/u must be an object, not array"):
        m.validate_input({"u": [1]})


# --- params ------------------------------------------------------------------------


@pytest.fixture
def paged(tmp_path: Path) -> MethodDef:
    """A query with a bounded integer limit (default 50), a boolean and a required string."""
    params = {
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
        "reverse": {"type": "boolean"},
        "cursor": {"type": "string", "maxLength": 8},
    }
    return load_one(tmp_path, query("com.example.paged", params, required=["cursor"]))


def test_params_are_coerced_with_defaults(paged: MethodDef) -> None:
    """Integer and boolean params are coerced, and an absent param takes its default."""
    assert paged.validate_params({"cursor": "c", "reverse": "true"}) == {
        "cursor": "c",
        "reverse": True,
        "limit": 50,
    }
    assert paged.validate_params({"cursor": "c", "limit": "7", "reverse": "false"}) == {
        "cursor": "c",
        "limit": 7,
        "reverse": False,
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cursor": "c", "limit": "ten"}, "Params/limit must be an integer"),
        ({"cursor": "c", "limit": "1.5"}, "Params/limit must be an integer"),
        ({"cursor": "c", "limit": " 1"}, "Params/limit must be an integer"),
        ({"cursor": "c", "limit": "0"}, "Params/limit must be at least 1"),
        ({"cursor": "c", "reverse": "True"}, "Params/reverse must be true or false"),
        ({"cursor": "c" * 9}, "Params/cursor must be at most 8 characters"),
        ({"cursor": "c", "page": "2"}, "Params/page is not a parameter"),
        ({"cursor": "c", "x" * 100: "2"}, "Params include a name that is not a parameter"),
        ({}, 'Params must have the property "cursor"'),
        (MultiDict([("cursor", "a"), ("cursor", "b")]), "Params/cursor must be given at most once"),
    ],
)
def test_params_reject_bad_values(paged: MethodDef, params: Any, message: str) -> None:
    """Bad, unknown, repeated or missing params are InvalidInput naming the param."""
    with pytest.raises(InvalidInput, match=message):
        paged.validate_params(params)


def test_params_without_a_params_def(registry: LexiconRegistry) -> None:
    """A method with no params def accepts no params at all, and returns {} for none."""
    delete = method(registry, f"{SECRET}.delete")
    assert delete.validate_params({}) == {}
    with pytest.raises(InvalidInput, match="Params/limit is not a parameter"):
        delete.validate_params({"limit": "1"})


# --- malformed lexicons ------------------------------------------------------------

MAIN = {"type": "query"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not a readable JSON document"),
        ('{"lexicon": 1, "lexicon": 1}', "duplicate key 'lexicon'"),
        ('{"lexicon": NaN}', "NaN is not JSON"),
        ([], "document: must be a JSON object"),
        ({"lexicon": 2, "id": "com.example.x", "defs": {"main": MAIN}}, "lexicon: must be 1"),
        ({"lexicon": True, "id": "com.example.x", "defs": {"main": MAIN}}, "lexicon: must be 1"),
        ({"lexicon": 1, "defs": {"main": MAIN}}, "id: must be a valid NSID"),
        ({"lexicon": 1, "id": "com.example", "defs": {"main": MAIN}}, "id: must be a valid NSID"),
        ({"lexicon": 1, "id": "com.example.x"}, "defs: must be a non-empty object"),
        (
            {"lexicon": 1, "id": "com.example.x", "defs": {"main": {"type": "strng"}}},
            "defs/main: unsupported def type 'strng'",
        ),
        (
            {"lexicon": 1, "id": "com.example.x", "defs": {"other": {"type": "procedure"}}},
            "defs/other: a procedure must be the main def",
        ),
        (
            {"lexicon": 1, "id": "com.example.x", "defs": {"main": {"type": "blob"}}},
            "unsupported def type 'blob'",
        ),
        (
            procedure(
                "com.example.x",
                {"type": "object", "properties": {"u": {"type": "string", "format": "uri"}}},
            ),
            "defs/main/input/schema/properties/u: unsupported format 'uri'",
        ),
        (
            procedure("com.example.x", {"type": "object", "required": ["a"], "properties": {}}),
            "defs/main/input/schema/required: names 'a', not a property",
        ),
        (
            procedure("com.example.x", {"type": "string"}),
            "defs/main/input/schema: must be of type one of",
        ),
        (
            procedure("com.example.x", {"type": "array"}),
            "defs/main/input/schema: must be of type one of",
        ),
        (
            procedure("com.example.x", {"type": "object", "properties": {"a": {"type": "array"}}}),
            "defs/main/input/schema/properties/a: an array needs items",
        ),
        (
            procedure(
                "com.example.x",
                {"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}},
            ),
            "properties/a/maxLength: must be a whole number",
        ),
        (
            procedure("com.example.x", {"type": "ref", "ref": "#missing"}),
            "defs/main/input/schema: ref '#missing' resolves to nothing",
        ),
        (
            procedure("com.example.x", {"type": "ref", "ref": "#"}),
            "defs/main/input/schema/ref: must be",
        ),
        (
            {
                "lexicon": 1,
                "id": "com.example.x",
                "defs": {"main": {"type": "query", "input": {"encoding": "application/json"}}},
            },
            "defs/main/input: a query takes no input",
        ),
        (
            query("com.example.x", {"tags": {"type": "array", "items": {"type": "string"}}}),
            "defs/main/parameters/properties/tags: must be of type one of",
        ),
        (
            {
                "lexicon": 1,
                "id": "com.example.x",
                "defs": {"main": {"type": "query", "errors": ["NotFound"]}},
            },
            "defs/main/errors: must be a list of objects",
        ),
        (
            procedure(
                "com.example.x",
                {"type": "ref", "ref": "#a"},
                a={"type": "ref", "ref": "#b"},
                b={"type": "ref", "ref": "#a"},
            ),
            "refs form a cycle",
        ),
    ],
)
def test_malformed_lexicons_raise_naming_the_file(
    tmp_path: Path, document: Any, message: str
) -> None:
    """A malformed lexicon raises LexiconError naming the file and the problem."""
    path = write(tmp_path, "nested/broken.json", document)
    with pytest.raises(LexiconError) as caught:
        LexiconRegistry.load(tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    """Two files declaring one id raise LexiconError naming both files."""
    document = {"lexicon": 1, "id": "com.example.same", "defs": {"main": MAIN}}
    first = write(tmp_path, "a.json", document)
    second = write(tmp_path, "b.json", document)
    with pytest.raises(LexiconError) as caught:
        LexiconRegistry.load(tmp_path)
    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """Loading a directory that does not exist raises rather than serving no methods."""
    with pytest.raises(LexiconError, match="lexicon directory not found"):
        LexiconRegistry.load(tmp_path / "absent")


def test_only_json_files_are_loaded(tmp_path: Path) -> None:
    """Files not ending in .json are ignored, however malformed."""
    write(tmp_path, "README.md", "{not json")
    write(tmp_path, "q.json", {"lexicon": 1, "id": "com.example.q", "defs": {"main": MAIN}})
    assert list(LexiconRegistry.load(tmp_path).methods) == ["com.example.q"]


# --- NSIDs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["com.example.fooBar", "place.wisp.v2.secret.rotate", "a.b.c", "com.ex-ample.x1", "a.0b.c"],
)
def test_valid_nsids(value: str) -> None:
    """Reversed-domain authorities followed by an alphanumeric name are NSIDs."""
    assert is_valid_nsid(value)


@pytest.mark.parametrize(
    "value",
    [
        "com.example",
        "com.example.foo-bar",
        "com.example.1foo",
        "1com.example.foo",
        "com.-example.foo",
        "com..foo",
        "com.example.foo\n",
        "com.exämple.foo",
        "com.example.foo#main",
        "com." + "a" * 64 + ".foo",
        "com.example." + "a" * 64,
        ".".join(["a" * 60] * 5) + ".foo",
    ],
)
def test_invalid_nsids(value: str) -> None:
    """Two segments, hyphenated or digit-led names, bad labels and over-long parts are not NSIDs."""
    assert not is_valid_nsid(value)
