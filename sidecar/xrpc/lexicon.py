"""Load atproto lexicons and validate values against them.

As in atproto's ``xrpc-server``, a method exists only if a lexicon declares it
as a ``query`` or a ``procedure``, and its HTTP verb comes from that kind. This
module is the registry: it loads the documents, has ``document_checker``
check them, and declares the methods (``formats`` and ``schemas`` beside it
check values); it knows nothing of HTTP or Redis: the XRPC layer routes by
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
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from sidecar.errors import LexiconError
from sidecar.xrpc.document_checker import DocumentChecker
from sidecar.xrpc.schemas import Docs, MethodDef, Schemas

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class LexiconRegistry:
    """Every loaded lexicon, and the XRPC methods they declare.

    Build one with :meth:`load` (or :meth:`from_documents`); both check every
    document and every ref before anything is served.
    """

    def __init__(self, docs: Docs) -> None:
        """Wrap documents that ``DocumentChecker`` already accepted and froze."""
        schemas = Schemas(docs)
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
        checker = DocumentChecker()
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


def _method_def(nsid: str, main: Mapping[str, Any], schemas: Schemas) -> MethodDef:
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
