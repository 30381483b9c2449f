"""Read-model tables, each declared once: its columns are the fields of a msgspec row struct.

A column's name is the field's name and its DuckDB type follows from the field's annotation (`int` → BIGINT,
`float` → DOUBLE, `str` → VARCHAR, `bool` → BOOLEAN; `X | None` is a nullable X). A read model builds its rows
as instances of that struct, so a column is named in one place. A per-run table starts with a `run_id` column
that the projector fills: the rows of one run are replaced together.

Changing a row struct changes its table: raise the projection's `version` so that existing projection files
rebuild it (`Projector` drops and refills the tables of a projection whose version changed).
"""

import types
import typing
from typing import Any, Iterable

import attrs
import msgspec
import pyarrow as pa

_TYPES: dict[type, tuple[str, pa.DataType]] = {
    str: ("VARCHAR", pa.string()), int: ("BIGINT", pa.int64()), float: ("DOUBLE", pa.float64()),
    bool: ("BOOLEAN", pa.bool_()),
}
RUN_ID = ("run_id", str)


def _scalar(annotation: Any) -> type:
    """The scalar type of a field: `X` for `X` and `X | None`; TypeError for anything a column cannot hold."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation not in _TYPES:
        raise TypeError(f"a read-model column holds str, int, float or bool (or None), not {annotation!r}")
    return annotation


def _fields(row: type) -> list[tuple[str, type]]:
    return [(f.name, _scalar(f.type)) for f in msgspec.structs.fields(row)]


@attrs.frozen
class Table:
    """One read-model table: its name, the struct its rows are, and the order rows are read in."""

    name: str
    row: type
    """A msgspec Struct of scalar fields: the table's columns (after `run_id` for a per-run table)."""
    order: tuple[str, ...]
    per_run: bool = True

    def __attrs_post_init__(self) -> None:
        _fields(self.row)  # a field no column can hold fails here, where the read model is declared

    @property
    def fields(self) -> list[tuple[str, type]]:
        return ([RUN_ID] if self.per_run else []) + _fields(self.row)

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(name, DuckDB type) of each column, in order."""
        return [(name, _TYPES[kind][0]) for name, kind in self.fields]

    @property
    def ddl(self) -> str:
        cols = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(name, _TYPES[kind][1]) for name, kind in self.fields])

    def records(self, run_id: str | None, rows: Iterable[msgspec.Struct]) -> list[dict[str, Any]]:
        """Rows as column → value, with `run_id` first in a per-run table."""
        head = {"run_id": run_id} if self.per_run else {}
        return [{**head, **msgspec.structs.asdict(row)} for row in rows]

    def arrow(self, records: list[dict[str, Any]]) -> pa.Table:
        return pa.Table.from_pylist(records, schema=self.schema)
