"""Which SQL `esper query` may run: reading statements only, classified by DuckDB's own parser.

DuckDB puts every attached file (and its WAL) on the allowed paths of a connection, so with external
access off a statement can still DETACH a store and ATTACH the same file read-write, or COPY over it.
No setting closes that; this check is the wall. External access off, the configuration locked and no
temp directory (`Reader.lock_down`) are defence in depth.
"""

import re

import duckdb

from esper.errors import BadInput, first_line

READING = "only reading statements may run (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)"


def reading_statements(con: duckdb.DuckDBPyConnection, sql: str) -> list:
    """The statements of `sql`, parsed but not run, if every one only reads; else BadInput naming the first that
    does not.

    DESCRIBE, SHOW and SUMMARIZE parse as SELECT. EXPLAIN is allowed of a SELECT only, and never EXPLAIN ANALYZE,
    which executes its statement."""
    try:
        statements = con.extract_statements(sql)
        for number, st in enumerate(statements, 1):
            kind = _kind(st)
            if kind == "EXPLAIN":
                kind = _explained_kind(con, st.query)
            if kind != "SELECT":
                shown = _excerpt(st.query)
                raise BadInput(f"{READING}; statement {number} is {kind}" + (f" ({shown})" if shown else "")
                               + (_MULTI_HINT if kind == "MULTI" else ""))
    except duckdb.Error as exc:
        raise bad_sql(exc) from None
    return statements


_HINTS = ("Did you mean", "Candidate bindings")
"""How DuckDB begins the line under its error that names what the SQL may have meant."""


def bad_sql(exc: duckdb.Error) -> BadInput:
    """DuckDB's error as one line: its first, and what it suggests the SQL meant (a column it knows). An unknown
    table gets the views' names instead of DuckDB's guess, which may be one of its own catalog tables."""
    lines = str(exc).splitlines()
    if lines and lines[0].startswith("Catalog Error: Table with name"):
        return BadInput(f"bad SQL: {lines[0]} (the views: events, runs)")
    hint = next((line.strip() for line in lines[1:] if line.startswith(_HINTS)), None)
    return BadInput(f"bad SQL: {first_line(exc)}" + (f" {hint}" if hint else ""))


_MULTI_HINT = (": DuckDB runs it as several statements, one of which creates a type; a PIVOT does so when it has to"
               " find its columns' values, so name them (PIVOT ... ON col IN ('a', 'b') ...)")


def _kind(statement) -> str:
    try:
        name = statement.type.name
    except ValueError:  # a kind this duckdb's Python enum does not name (e.g. UPDATE EXTENSIONS)
        return "UNKNOWN"
    return name


def _explained_kind(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """SELECT for `EXPLAIN [(options)] <a SELECT>`; what else it explains, or EXPLAIN ANALYZE, otherwise."""
    words = _words(text)
    if not words or words[0][1] != "explain":
        return "EXPLAIN"
    rest = words[1:]
    if rest and rest[0][1] == "(":  # EXPLAIN (FORMAT json, ANALYZE) ...
        depth = 0
        for i, (_, word) in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(word, 0)
            if word in ("analyze", "analyse"):
                return "EXPLAIN ANALYZE"
            if depth == 0:
                rest = rest[i + 1:]
                break
    if not rest:
        return "EXPLAIN"
    if rest[0][1] in ("analyze", "analyse"):
        return "EXPLAIN ANALYZE"
    inner = con.extract_statements(text[rest[0][0]:])
    kinds = [_kind(st) for st in inner]
    return "SELECT" if kinds == ["SELECT"] else f"EXPLAIN {' '.join(kinds) or 'of nothing'}"


def _words(text: str) -> list[tuple[int, str]]:
    """(offset, lowercased first word or symbol) of each token of `text` that is not a comment."""
    out = []
    for offset, token_type in duckdb.tokenize(text):
        if str(token_type).endswith("comment"):
            continue
        match = re.match(r"\w+|\S", text[offset:])
        if match:
            out.append((offset, match.group(0).lower()))
    return out


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split()).rstrip(";").strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
