"""The committed JSON Schemas must match the event and command types."""

import json
import os
from pathlib import Path

import msgspec
import pytest

from esper.errors import BadInput
from esper.leyline.schemas import _normalised, schema_documents, write_schemas

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_committed_schemas_are_fresh():
    """Compared as JSON (their meaning), not as text."""
    docs = {name: json.loads(text) for name, text in schema_documents().items()}
    committed = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    stale = sorted(name for name in docs if committed.get(name) != docs[name])
    extra = sorted(set(committed) - set(docs))
    assert not stale and not extra, f"run `esper schemas` (stale: {stale}, extra: {extra})"


def test_the_alternatives_of_an_optional_field_come_in_one_order_whatever_msgspec_gives():
    class Part(msgspec.Struct):
        n: int

    class Whole(msgspec.Struct):
        part: Part | None = None

    schema = msgspec.json.schema(Whole)
    alternatives = schema["$defs"]["Whole"]["properties"]["part"]["anyOf"]
    flipped = json.loads(json.dumps(schema))
    flipped["$defs"]["Whole"]["properties"]["part"]["anyOf"] = alternatives[::-1]
    assert len(alternatives) == 2 and _normalised(schema) == _normalised(flipped)


def test_descriptions_do_not_depend_on_how_a_docstring_is_indented():
    class Indented(msgspec.Struct):
        """First line, and a second
        line indented as in source."""

    class Flush(msgspec.Struct):
        """First line, and a second
line indented as in source."""

    assert _normalised(msgspec.json.schema(Indented))["$defs"]["Indented"]["description"] == \
        _normalised(msgspec.json.schema(Flush))["$defs"]["Flush"]["description"] == \
        "First line, and a second line indented as in source."


def test_every_event_schema_names_its_tag():
    for name, text in schema_documents().items():
        schema = json.loads(text)
        tag = name.removesuffix(".json")
        definition = schema["$defs"][schema["$ref"].split("/")[-1]]
        tag_field = "type" if "type" in definition["properties"] else "op"
        assert definition["properties"][tag_field]["enum"] == [tag]


def test_a_schema_name_taken_by_no_file_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / "out"
    (folder / "RunFailed.json").mkdir(parents=True)
    with pytest.raises(BadInput, match=r"RunFailed.json is not a file"):
        write_schemas(folder)
    assert [p.name for p in folder.iterdir()] == ["RunFailed.json"]


def test_writing_schemas_never_opens_a_pipe(tmp_path):
    """A pipe named like a stale schema would block the check of whether it is ours until someone wrote to it."""
    os.mkfifo(tmp_path / "Waiting.json")
    assert {p.name for p in write_schemas(tmp_path)} == set(schema_documents())
    assert (tmp_path / "Waiting.json").is_fifo()


def test_writing_schemas_removes_only_stale_files_of_its_own(tmp_path):
    (tmp_path / "my-notes.json").write_text("{}")
    (tmp_path / "list.json").write_text("[1, 2]")
    stale = json.loads(schema_documents()["RunStarted.json"])
    (tmp_path / "RemovedEvent.json").write_text(json.dumps({**stale, "$comment": stale["$comment"].replace(
        "RunStarted", "RemovedEvent")}))
    written = write_schemas(tmp_path)
    assert {p.name for p in written} == set(schema_documents())
    assert (tmp_path / "my-notes.json").read_text() == "{}"
    assert (tmp_path / "list.json").exists()
    assert not (tmp_path / "RemovedEvent.json").exists()
