"""The projector: keeps every read model (`esper.nissa.readmodels`) caught up with a workspace's event log.

It keeps, per projection and per run, the last `seq` it folded, that event's `event_id` and hash, and the folded
state (JSON) in `nissa_checkpoints`, all in the same transaction as the rows. So it catches up incrementally (it
reads only the events after each checkpoint), and a rebuild from zero gives the very same tables: the state
round-trips through JSON exactly.

If the log under a checkpoint changed (the event at the checkpointed `seq` has another `event_id` or hash,
or the run is gone from the workspace), that run is folded again from its first event. The events read are
checked against the run's hash chain (esper.store.chain), continuing from the hash the checkpoint saw. Before
that, every run's chain and heads are checked in one pass (`Reader.altered_runs`, as `esper runs` checks them): an
event edited after it was folded, which no catch-up reads again, and a tail cut off, which leaves a chain that
holds, are seen there. So every run `esper runs` lists as altered is out of every read model, whatever the
projection file held before; `catch_up(check=runs)` also folds those runs again from their
checked logs (what `esper report` asks for the runs it draws: the projection file, which no hash covers, may
have been edited). A run whose check fails is dropped from every read model (its rows and checkpoints deleted, a
note added, the reason kept in `altered`): the projections never serve an altered log, old values or new. If a
projection's (or a derived table's) `version` changed, its tables are rebuilt (`nissa_versions`). Derived tables
are recomputed whenever the projections' rows change.

The projection database is `<workspace>/.nissa/projections.duckdb` (never a `*.duckdb` in the workspace
root: those are event stores), or an in-memory database when that file cannot be opened (another
process holds it, or the workspace is read-only).
"""

from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import pyarrow as pa

from esper.errors import LogAltered, StoreUnavailable, first_line
from esper.leyline.events import decode
from esper.nissa.projection import Derived, Projection
from esper.nissa.readmodels import default_derived, default_projections
from esper.nissa.tables import Table
from esper.store import Reader, Recorded, Workspace, chain

PROJECTION_DIR = ".nissa"
PROJECTION_FILE = "projections.duckdb"

_META_DDL = [
    "CREATE TABLE IF NOT EXISTS nissa_versions (projection VARCHAR, version INTEGER)",
    "CREATE TABLE IF NOT EXISTS nissa_checkpoints"
    " (projection VARCHAR, run_id VARCHAR, last_seq BIGINT, last_event_id VARCHAR, state JSON, last_hash VARCHAR)",
    "ALTER TABLE nissa_checkpoints ADD COLUMN IF NOT EXISTS last_hash VARCHAR",  # a file written before the chain
]


class Projector:
    """Keeps every projection's read model caught up with a workspace's event log.

    `catch_up(reader)` folds only the events after each checkpoint; `rebuild(reader)` starts from zero.
    Both write each group of runs in one transaction (rows and checkpoints together).
    """

    RUNS_PER_TRANSACTION = 256

    def __init__(self, con: duckdb.DuckDBPyConnection, projections: Sequence[Projection] | None = None,
                 path: Path | None = None, derived: Sequence[Derived] | None = None):
        self.con = con
        self.path = path
        self.notes: list[str] = []
        self.altered: dict[str, str] = {}
        """Runs whose log failed its hash-chain check in a catch-up → why; they are in no read model."""
        self._hashes: dict[str, str | None] = {}  # run → hash of the last event `_fetch` checked
        if projections is None:  # the default read models, and the tables derived from theirs
            projections, derived = default_projections(), default_derived() if derived is None else derived
        self.projections = list(projections)
        self.derived = list(derived or ())
        self._ensure_schema()

    @classmethod
    def memory(cls, projections: Sequence[Projection] | None = None) -> "Projector":
        return cls(duckdb.connect(":memory:"), projections)

    @classmethod
    def open(cls, path: str | Path, projections: Sequence[Projection] | None = None) -> "Projector":
        path = Path(path)
        notes = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                con = duckdb.connect(str(path))
            except duckdb.Error as exc:
                if not _no_database(path, exc):
                    raise
                # Derived from the stores, so made again: a file that is no database (its creation cut short by a
                # full disk, say) would otherwise send every later command to memory, and never be repaired.
                path.unlink()
                path.with_name(path.name + ".wal").unlink(missing_ok=True)
                con = duckdb.connect(str(path))
                notes.append(f"projections {path} were no database ({first_line(exc)}): made again")
        except (OSError, duckdb.Error) as exc:
            raise StoreUnavailable(f"cannot open projections {path}: {first_line(exc)}") from None
        try:
            projector = cls(con, projections, path)
            projector.notes += notes
            return projector
        except duckdb.Error as exc:
            con.close()
            raise StoreUnavailable(f"cannot use projections {path}: {first_line(exc)}") from None

    @classmethod
    def for_workspace(cls, workspace: Workspace, projections: Sequence[Projection] | None = None) -> "Projector":
        """The workspace's persistent projections, or in-memory ones (with a note) when the file is unavailable."""
        path = workspace.root / PROJECTION_DIR / PROJECTION_FILE
        if workspace.root.is_dir():
            try:
                return cls.open(path, projections)
            except StoreUnavailable as exc:
                projector = cls.memory(projections)
                projector.notes.append(f"{exc}; projecting in memory")
                return projector
        return cls.memory(projections)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Projector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema ---------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        for ddl in _META_DDL:
            self.con.execute(ddl)
        versions = dict(self.con.execute("SELECT projection, version FROM nissa_versions").fetchall())
        for p in self.projections:
            if versions.get(p.name) != p.version:
                self._reset_projection(p)
            for table in p.tables:
                self.con.execute(table.ddl)
        for d in self.derived:
            if versions.get(d.name) != d.version:
                self._reset(d.name, d.version, (d.table,), lambda: self._refresh(d))
            self.con.execute(d.table.ddl)

    def _reset_projection(self, p: Projection) -> None:
        def forget() -> None:
            self.con.execute("DELETE FROM nissa_checkpoints WHERE projection = ?", [p.name])

        self._reset(p.name, p.version, p.tables, forget)

    def _reset(self, name: str, version: int, tables: Sequence[Table], then: Callable[[], None]) -> None:
        """Recreate `tables` empty (their columns as declared now), record `version`, and do `then`, in one
        transaction."""
        self.con.begin()
        try:
            for table in tables:
                self.con.execute(f"DROP TABLE IF EXISTS {table.name}")
                self.con.execute(table.ddl)
            then()
            self.con.execute("DELETE FROM nissa_versions WHERE projection = ?", [name])
            self.con.execute("INSERT INTO nissa_versions VALUES (?, ?)", [name, version])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def rebuild(self, reader: Reader) -> int:
        """Drop every read model and fold the whole log again; returns the number of events folded."""
        for p in self.projections:
            self._reset_projection(p)
        self._refresh_derived()
        return self.catch_up(reader)

    # ---- catching up ----------------------------------------------------------------------------

    def catch_up(self, reader: Reader, max_events: int | None = None, check: Sequence[str] = ()) -> int:
        """Fold the events stored after each checkpoint (at most `max_events`); returns how many were read.
        Every run `Reader.altered_runs` refuses is dropped first. The runs in `check` have their
        whole hash chain checked and are folded again from their first event (cost linear in those runs): what is
        drawn from them is then what their checked log says, whatever the projection file (derived data, which no
        hash covers) was made to hold."""
        heads = dict(reader.con.execute("SELECT run_id, max(seq) FROM events GROUP BY run_id").fetchall())
        checked = set()
        for run in check:
            try:
                note = reader.check_run(run)
            except LogAltered as exc:
                self._drop_altered(run, str(exc))
                continue
            checked.add(run)
            if note:
                self.notes.append(note)
        for run, why in sorted(reader.altered_runs().items()):  # what `esper runs` lists as altered
            if run not in checked and run not in self.altered:
                self._drop_altered(run, why)
        heads = {run: head for run, head in heads.items() if run not in self.altered}
        checkpoints = self._checkpoints()
        stale = self._stale_runs(reader, checkpoints, heads) | (checked & set(heads))
        if stale:
            self._write(stale, {}, [])
            checkpoints = {key: value for key, value in checkpoints.items() if key[1] not in stale}
        start: dict[str, tuple[int, str | None]] = {}  # run → the checkpoint every projection has passed (seq, hash)
        for run in heads:
            marks = [checkpoints.get((p.name, run), (0, "", None)) for p in self.projections]
            seq, _, hash_ = min(marks, key=lambda m: m[0])
            start[run] = (seq, hash_)
        todo = sorted(run for run, head in heads.items() if head > start[run][0])
        folded = 0
        for i in range(0, len(todo), self.RUNS_PER_TRANSACTION):
            budget = None if max_events is None else max_events - folded
            if budget is not None and budget <= 0:
                break
            group = todo[i:i + self.RUNS_PER_TRANSACTION]
            events = self._fetch(reader, group, start, budget)
            folded += sum(len(v) for v in events.values())
            self._fold_group(events, checkpoints)
        return folded

    def _drop_altered(self, run: str, why: str) -> None:
        """A run whose log does not hold its chain: out of every read model, with a note."""
        self.altered[run] = why
        self.notes.append(f"{why}; its projections are dropped")
        self._write({run}, {}, [])

    def _checkpoints(self) -> dict[tuple[str, str], tuple[int, str, str | None]]:
        rows = self.con.execute(
            "SELECT projection, run_id, last_seq, last_event_id, last_hash FROM nissa_checkpoints").fetchall()
        return {(p, run): (int(seq), eid, hash_) for p, run, seq, eid, hash_ in rows}

    def _stale_runs(self, reader: Reader, checkpoints: dict, heads: dict[str, int]) -> set[str]:
        """Runs whose log no longer holds the event a checkpoint ended on (changed, shortened or gone)."""
        if not checkpoints:
            return set()
        keys = sorted({(run, seq, eid, hash_ or "") for (_, run), (seq, eid, hash_) in checkpoints.items()})
        rows = reader.con.execute(
            "SELECT c.run_id, c.eid, e.event_id::VARCHAR, c.hash, coalesce(e.hash, '') FROM"
            " (SELECT unnest($runs::VARCHAR[]) AS run_id, unnest($seqs::BIGINT[]) AS seq,"
            "  unnest($eids::VARCHAR[]) AS eid, unnest($hashes::VARCHAR[]) AS hash) c"
            " LEFT JOIN events e ON e.run_id = c.run_id AND e.seq = c.seq",
            {"runs": [k[0] for k in keys], "seqs": [k[1] for k in keys], "eids": [k[2] for k in keys],
             "hashes": [k[3] for k in keys]},
        ).fetchall()
        return {run for run, expected, found, hash_, found_hash in rows
                if found != expected or hash_ != found_hash} | {run for (_, run) in checkpoints if run not in heads}

    def _fetch(self, reader: Reader, runs: list[str], start: dict[str, tuple[int, str | None]],
               limit: int | None) -> dict[str, list[Recorded]]:
        """The runs' events after `start`, each run's checked to continue the hash its checkpoint saw; a run
        whose check fails is dropped (`_drop_altered`) and left out."""
        sql = (
            "SELECT e.position, e.run_id, e.seq, e.event_id, e.ts, e.type, e.payload, e.hash, e.epoch, e.seed_id, e.slot"
            " FROM events e"
            " JOIN (SELECT unnest($runs::VARCHAR[]) AS run_id, unnest($seqs::BIGINT[]) AS after) c"
            " ON e.run_id = c.run_id AND e.seq > c.after ORDER BY e.run_id, e.seq"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = reader.con.execute(sql, {"runs": runs, "seqs": [start[r][0] for r in runs]}).fetchall()
        out: dict[str, list[Recorded]] = {}
        verifiers = {run: chain.Verifier(run, *start[run]) for run in runs}
        altered: set[str] = set()
        for position, run, seq, event_id, ts, type_, payload, hash_, *columns in rows:
            if run in altered:
                continue
            try:
                verifiers[run].feed(seq, type_, payload, hash_, columns)
            except LogAltered as exc:
                altered.add(run)
                out.pop(run, None)
                self._drop_altered(run, str(exc))
                continue
            out.setdefault(run, []).append(Recorded(position, run, seq, event_id, ts, decode(payload)))
        self._hashes = {run: v.hash for run, v in verifiers.items()}
        return out

    def _fold_group(self, events: dict[str, list[Recorded]], checkpoints: dict) -> None:
        rows: dict[str, list[dict[str, Any]]] = {}
        marks: list[tuple[str, str, int, str, str, str | None]] = []
        tables = {t.name: t for p in self.projections for t in p.tables}
        states = self._load_states(list(events))
        for p in self.projections:
            for run, recorded in events.items():
                done = checkpoints.get((p.name, run), (0, ""))[0]
                fresh = [r for r in recorded if r.seq > done]
                state = states.get((p.name, run)) or p.initial()
                for r in fresh:
                    state = p.apply(state, r)
                last = fresh[-1] if fresh else None
                if last is None:  # this projection was ahead of the others for this run
                    last_seq, last_eid, last_hash = checkpoints[(p.name, run)]
                else:
                    last_seq, last_eid, last_hash = last.seq, str(last.event_id), self._hashes[run]
                marks.append((p.name, run, last_seq, last_eid, p.encode(state), last_hash))
                for table, table_rows in p.rows(state).items():
                    rows.setdefault(table, []).extend(tables[table].records(run, table_rows))
        self._write(set(events), rows, marks)

    def _load_states(self, runs: list[str]) -> dict[tuple[str, str], Any]:
        by_name = {p.name: p for p in self.projections}
        found = self.con.execute(
            "SELECT projection, run_id, state FROM nissa_checkpoints WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
            [runs],
        ).fetchall()
        return {(name, run): by_name[name].decode(state) for name, run, state in found if name in by_name}

    def _write(self, runs: set[str], rows: dict[str, list[dict[str, Any]]], marks: list[tuple]) -> None:
        """Replace the rows and checkpoints of `runs`, and refresh `blueprint_stats`, in one transaction."""
        run_list = sorted(runs)
        self.con.begin()
        try:
            for p in self.projections:
                for table in p.tables:
                    self.con.execute(f"DELETE FROM {table.name} WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [run_list])
                    if rows.get(table.name):
                        self._insert(table, rows[table.name])
            self.con.execute(
                "DELETE FROM nissa_checkpoints WHERE run_id IN (SELECT unnest(?::VARCHAR[]))"
                " AND projection IN (SELECT unnest(?::VARCHAR[]))",
                [run_list, [p.name for p in self.projections]],
            )
            if marks:
                cols = list(zip(*marks))
                batch = pa.table({
                    "projection": pa.array(cols[0], pa.string()), "run_id": pa.array(cols[1], pa.string()),
                    "last_seq": pa.array(cols[2], pa.int64()), "last_event_id": pa.array(cols[3], pa.string()),
                    "state": pa.array(cols[4], pa.string()), "last_hash": pa.array(cols[5], pa.string()),
                })
                self._insert_arrow("nissa_checkpoints (projection, run_id, last_seq, last_event_id, state, last_hash)",
                                   batch, "projection, run_id, last_seq, last_event_id, state::JSON, last_hash")
            self._refresh_derived()
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def _refresh_derived(self) -> None:
        """Recompute every derived table from the projections' tables as they are now (inside the caller's
        transaction)."""
        for d in self.derived:
            self._refresh(d)

    def _refresh(self, d: Derived) -> None:
        self.con.execute(f"DELETE FROM {d.table.name}")
        rows = d.compute(self.con)
        if rows:
            self._insert(d.table, d.table.records(None, rows))

    def _insert(self, table: Table, records: list[dict[str, Any]]) -> None:
        self._insert_arrow(table.name, table.arrow(records), "*")

    def _insert_arrow(self, name: str, batch: pa.Table, select: str) -> None:
        self.con.register("nissa_batch", batch)
        try:
            self.con.execute(f"INSERT INTO {name} SELECT {select} FROM nissa_batch")
        finally:
            self.con.unregister("nissa_batch")

    # ---- reading --------------------------------------------------------------------------------

    def fetch(self, table: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of a read-model table (of one run, or all), in the table's natural order."""
        spec = {t.name: t for t in self._tables()}[table]
        sql = f"SELECT * FROM {spec.name}"
        params: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        sql += " ORDER BY " + ", ".join(f"{c} NULLS LAST" for c in spec.order)
        cursor = self.con.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def table_names(self) -> list[str]:
        return [t.name for t in self._tables()] + ["nissa_checkpoints"]

    def _tables(self) -> list[Table]:
        return [t for p in self.projections for t in p.tables] + [d.table for d in self.derived]


def caught_up(workspace: Workspace, reader: Reader, check: Sequence[str] = ()) -> Projector:
    """The workspace's projector, caught up with `reader`, the whole chains of the runs in `check` checked.

    If the projection file is unusable (written by other code, damaged), the read models are rebuilt in
    memory instead, with a note: projections are disposable, the log is the truth.
    """
    projector = Projector.for_workspace(workspace)
    try:
        projector.catch_up(reader, check=check)
    except duckdb.Error as exc:
        if projector.path is None:
            raise
        projector.close()
        fallback = Projector.memory()
        fallback.notes.append(f"projections {projector.path} unusable ({first_line(exc)}); rebuilt in memory")
        fallback.catch_up(reader, check=check)
        return fallback
    return projector


def _no_database(path: Path, exc: duckdb.Error) -> bool:
    """Whether the projection file at `path` is a file but no DuckDB database. An empty or garbage file says so; one
    another process holds (creating it, say) says it could not be locked, and is left alone."""
    return path.is_file() and "not a valid DuckDB database file" in str(exc)


__all__ = ["PROJECTION_DIR", "PROJECTION_FILE", "Projector", "caught_up"]
