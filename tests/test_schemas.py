"""The committed JSON Schemas must match the event and command types."""

import json
from pathlib import Path

from esper.leyline.schemas import schema_documents

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_committed_schemas_are_fresh():
    docs = schema_documents()
    committed = {p.name: p.read_text() for p in SCHEMAS.glob("*.json")}
    stale = sorted(name for name in docs if committed.get(name) != docs[name])
    extra = sorted(set(committed) - set(docs))
    assert not stale and not extra, f"run `esper schemas` (stale: {stale}, extra: {extra})"


def test_every_event_schema_names_its_tag():
    for name, text in schema_documents().items():
        schema = json.loads(text)
        tag = name.removesuffix(".json")
        definition = schema["$defs"][schema["$ref"].split("/")[-1]]
        tag_field = "type" if "type" in definition["properties"] else "op"
        assert definition["properties"][tag_field]["enum"] == [tag]
