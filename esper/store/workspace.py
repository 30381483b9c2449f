"""A workspace is a folder of store files; queries see every file behind one read-only `events` view.

DuckDB lets one process hold a file read-write and no one else open it at all. So each writer owns
its own file, and a reader attaches every file read-only. A file held by a live writer is read from a
snapshot copy (so a user can watch a run that is training); a file that cannot be read is skipped, and
each such file is reported in `notes`, never waited on.
"""

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import attrs
import duckdb

from esper.errors import BadInput, EsperError, LogAltered, StoreDamaged, UnknownRun, first_line
from esper.leyline.status import CLOSING_TAGS, ENDING_TAGS, FINISHED, sql_in, status_sql
from esper.store import chain
from esper.store.readonly import bad_sql, reading_statements
from esper.store.recorder import Recorded, decode_rows, read_events
from esper.store.schema import (COLUMNS, events_problem, format_comment, format_problem, hash_as_text,
                                stored_hash_type)

STORE_SUFFIX = ".duckdb"


def default_workspace() -> Path:
    """$ESPER_WORKSPACE, else ./runs (an empty variable counts as unset). A blank one is refused, as `-w " "` is:
    it would quietly record into a folder named by spaces."""
    named = os.environ.get("ESPER_WORKSPACE", "")
    if named and not named.strip():
        raise BadInput("ESPER_WORKSPACE is blank: set it to a folder, or unset it for ./runs")
    return Path(named or "runs")


@attrs.define
class Workspace:
    """A folder of store files, one per writing process; `Workspace("runs")` or `Workspace.at(None)` (the default)."""

    root: Path = attrs.field(converter=Path)

    @classmethod
    def at(cls, root: str | Path | None) -> "Workspace":
        return cls(Path(root) if root is not None else default_workspace())

    def store_path(self, name: str) -> Path:
        return self.root / f"{name}{STORE_SUFFIX}"

    def store_files(self) -> list[Path]:
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise BadInput(f"workspace {self.root} is not a folder")
        return sorted(self.root.glob(f"*{STORE_SUFFIX}"))

    def reader(self) -> "Reader":
        return Reader(self.store_files())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the workspace's lock (`flock` on its folder, created if missing) for the block: what the block reads
        of the workspace cannot change under it by another holder's hand. A check-then-write (an import skipping
        the events already stored) takes it; readers and a run's writer, who each touch files of their own, do not.
        Waits for the holder; the system releases the lock when its process ends, however it ends."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cannot create workspace {self.root}: {exc.strerror or exc}") from None
        try:
            folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BadInput(f"cannot lock workspace {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # releases the lock


RUNS_COLUMNS = ("run_id", "task", "controller", "seed", "epochs", "ended", "finished", "val_accuracy", "test_accuracy",
                "params", "started", "status")
"""The `runs` view's columns: one row per training run, what `esper runs` lists, what `esper iql --runs` filters, and a
view any query can use. `status` is the run's status (`esper.leyline.status`: finished, failed, incomplete, or running
while a live writer holds its store), read from the events alone: the view checks no hash chain (`Reader.altered_runs`
does, and `esper runs` lists such a run `altered`); `ended` is the type of the event that ended it (`RunFinished`,
`RunFailed`), NULL while it trains or if it was cut off, and `finished` whether it finished. A run interrupted and
resumed (`RunResumed`) is one run, ended by what closes it last."""


def runs_view(live_stores: Iterable[str] = ()) -> str:
    """The DDL of the `runs` view over `all_events`, the stores in `live_stores` (aliases) held by live writers."""
    live = f"_store IN {sql_in(tuple(sorted(live_stores)))}" if live_stores else "false"
    return f"""
CREATE TEMP VIEW runs ({", ".join(RUNS_COLUMNS)}) AS
SELECT run_id, task, controller, seed, epochs,
       CASE WHEN last_closing IN {sql_in(ENDING_TAGS)} THEN last_closing END,
       status = '{FINISHED}', val_accuracy, test_accuracy, params, started, status
FROM (
  SELECT *, {status_sql("last_closing", "live")} AS status
  FROM (
    SELECT run_id,
           any_value(payload->>'$.config.task') FILTER (WHERE type = 'RunStarted') AS task,
           any_value(payload->>'$.config.controller') FILTER (WHERE type = 'RunStarted') AS controller,
           any_value((payload->>'$.config.seed')::BIGINT) FILTER (WHERE type = 'RunStarted') AS seed,
           count(*) FILTER (WHERE type = 'EpochEnded') AS epochs,
           arg_max(type, seq) FILTER (WHERE type IN {sql_in(CLOSING_TAGS)}) AS last_closing,
           any_value((payload->>'$.val_accuracy')::DOUBLE) FILTER (WHERE type = 'RunFinished') AS val_accuracy,
           any_value((payload->>'$.test_accuracy')::DOUBLE) FILTER (WHERE type = 'RunFinished') AS test_accuracy,
           any_value((payload->>'$.params')::BIGINT) FILTER (WHERE type = 'RunFinished') AS params,
           min(ts) AS started,
           bool_or({live}) AS live
    FROM all_events GROUP BY run_id
    HAVING bool_or(type = 'RunStarted')  -- training runs: a learner's stream holds PolicyUpdated only
  )
)
"""


@attrs.frozen
class StoredSnapshot:
    """A row of a store's `snapshots` table, and whether its head (seq, hash) is an event of the log."""

    seq: int
    hash: str | None
    state: str
    """JSON, opaque to the store."""
    matches: bool


@attrs.frozen
class CheckedRun:
    """A run's events read with its hash chain and heads checked (`Reader.read_checked`)."""

    recorded: list[Recorded]
    unsealed: str | None
    """The note to say when the run was written before hash chains (None: sealed)."""


def not_a_training_run(run_id: str) -> BadInput:
    """What replaying (or reporting, resuming) a learner's stream of `PolicyUpdated` events is: bad input."""
    episodes = f"; its episodes are named *-{run_id}-u*" if run_id.startswith("ppo-") else ""
    return BadInput(f"{run_id} is a learner's stream of updates, not a training run (`esper runs` lists those{episodes})")


class Reader:
    """An in-memory DuckDB with every readable store attached read-only behind the `events` and `runs` views."""

    def __init__(self, files: list[Path]):
        self.con = duckdb.connect(":memory:", config=NO_EXTENSION_LOADING)
        self.notes: list[str] = []
        self.live_files: set[str] = set()
        self.names: dict[str, str] = {}
        """Store alias → its file's name."""
        self._tmp = tempfile.TemporaryDirectory(prefix="esper-read-")
        attached = [alias for i, path in enumerate(files) if (alias := self._attach(path, f"store{i}"))]
        self.names = {alias: files[int(alias[5:])].name for alias in attached}
        self.anchored = {alias for alias in attached if self._has_table(alias, "heads")}
        """The stores with a `heads` table (written since the hash chain)."""
        union = " UNION ALL ".join(self._select_events(alias) for alias in attached)
        if not union:
            union = (
                "SELECT NULL::BIGINT AS position, NULL::VARCHAR AS run_id, NULL::BIGINT AS seq, NULL::UUID AS event_id,"
                " NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS type, NULL::INTEGER AS epoch, NULL::VARCHAR AS seed_id,"
                " NULL::VARCHAR AS slot, NULL::JSON AS payload, NULL::VARCHAR AS hash, NULL::VARCHAR AS _store WHERE false"
            )
        heads = " UNION ALL ".join(
            f"SELECT run_id, seq, hash, '{alias}' AS _store FROM {alias}.heads" for alias in sorted(self.anchored))
        if not heads:
            heads = "SELECT NULL::VARCHAR AS run_id, NULL::BIGINT AS seq, NULL::VARCHAR AS hash, NULL::VARCHAR AS _store WHERE false"
        self.con.execute(f"CREATE TEMP VIEW all_events AS {union}")
        self.con.execute("CREATE TEMP VIEW events AS SELECT * EXCLUDE (_store) FROM all_events")
        self.con.execute(f"CREATE TEMP VIEW all_heads AS {heads}")
        snapshots = " UNION ALL ".join(
            f"SELECT run_id, seq, hash, state, '{alias}' AS _store FROM {alias}.snapshots"
            for alias in attached if self._has_table(alias, "snapshots"))
        if not snapshots:  # stores written before snapshots have no such table
            snapshots = ("SELECT NULL::VARCHAR AS run_id, NULL::BIGINT AS seq, NULL::VARCHAR AS hash, NULL::JSON AS state,"
                         " NULL::VARCHAR AS _store WHERE false")
        self.con.execute(f"CREATE TEMP VIEW all_snapshots AS {snapshots}")
        self.con.execute(runs_view(self.live_files))

    def _select_events(self, alias: str) -> str:
        """The store's events with the columns in one order, the hashes as hex (NULL in a store written before
        the chain)."""
        hash_column = hash_as_text(stored_hash_type(self.con, alias))
        cols = ", ".join(hash_column if c == "hash" else c for c in COLUMNS)
        return f"SELECT {cols}, '{alias}' AS _store FROM {alias}.events"

    def _attach(self, path: Path, alias: str) -> str | None:
        try:
            self.con.execute(f"ATTACH '{_quote(path)}' AS {alias} (READ_ONLY)")
        except duckdb.Error as exc:
            if not _held_by_writer(exc):
                self.notes.append(f"skipped {path.name}: unreadable store ({first_line(exc)})")
                return None
            return self._attach_snapshot(path, alias)
        if problem := self._unreadable(alias, path):
            self.notes.append(f"skipped {path.name}: {problem}")
            self.con.execute(f"DETACH {alias}")
            return None
        return alias

    def _attach_snapshot(self, path: Path, alias: str) -> str | None:
        """A live writer holds the file: read a copy of it, as of now."""
        copy = Path(self._tmp.name) / f"{alias}-{path.name}"
        try:
            # The file before its WAL: a checkpoint that ends between the two copies then leaves an older
            # snapshot (old header, emptied WAL), not new data missing. WAL replay stops at a torn last entry.
            shutil.copyfile(path, copy)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
            self.con.execute(f"ATTACH '{_quote(copy)}' AS {alias} (READ_ONLY)")
        except (OSError, duckdb.Error) as exc:
            self.notes.append(f"skipped {path.name}: held by a live writer and no readable snapshot ({first_line(exc)})")
            return None
        if not self._has_table(alias, "events"):
            self.notes.append(f"skipped {path.name}: held by a live writer, snapshot has no events yet")
            return None
        if problem := self._unreadable(alias, copy):
            self.notes.append(f"skipped {path.name}: held by a live writer, {problem}")
            self.con.execute(f"DETACH {alias}")
            return None
        self.live_files.add(alias)
        self.notes.append(f"{path.name} is held by a live writer: read from a snapshot taken now")
        return alias

    def _unreadable(self, alias: str, path: Path) -> str | None:
        """Why the attached store cannot be read (None if it can): another program's file, damaged, or written by a
        newer Esper."""
        if foreign := events_problem(self.con, alias):
            return f"not an Esper store ({foreign})"
        if cut := self._cut_short(alias, path):
            return f"damaged store ({cut})"
        return format_problem(format_comment(self.con, alias))

    def _cut_short(self, alias: str, path: Path) -> str | None:
        """What is missing if the attached file is shorter than its blocks (a copy stopped part-way, say), else
        None. DuckDB reads a block only when a query needs it: a cut file would otherwise fail the first query
        that reads it, and with it every query over the workspace."""
        used, block_size = self.con.execute(  # free blocks may lie past the end of the file; used ones may not
            "SELECT used_blocks, block_size FROM pragma_database_size() WHERE database_name = ?", [alias]).fetchone()
        size, needed = path.stat().st_size, used * block_size
        return f"cut short: {size:,} bytes where its blocks in use take {needed:,}" if size < needed else None

    def _has_table(self, alias: str, table: str) -> bool:
        row = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = ?", [alias, table]
        ).fetchall()[0]
        return bool(row[0])

    def lock_down(self) -> None:
        """From here on no SQL can touch files outside the attached stores, load extensions, spill to a temp folder
        (DuckDB's default is `.tmp` in the working directory) or change the configuration. Attached files stay
        reachable, so SQL from a user goes through `query`, which runs reading statements only."""
        self.con.execute("SET temp_directory = ''")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def query(self, sql: str) -> list[tuple[list[str], list[tuple]]]:
        """Column names and rows of each statement of `sql` (`execute` of `reading`)."""
        return [(columns, rows) for columns, _, rows in self.execute(self.reading(sql))]

    def reading(self, sql: str) -> list:
        """The statements of `sql`, parsed, not run, once every one has been checked to only read
        (`reading_statements`); locks this reader down first. Bad, empty or non-reading SQL is BadInput."""
        self.lock_down()
        statements = reading_statements(self.con, sql)
        if not statements:  # only blanks, semicolons or comments
            raise BadInput("no SQL statement to run, e.g. esper query \"select count(*) from events\"")
        return statements

    def execute(self, statements: list) -> list[tuple[list[str], list, list[tuple]]]:
        """Column names, column types (DuckDB's: a JSON column's values arrive as text, told from text by its type
        alone) and rows of each of `statements` (from `reading`), run one by one; a failing one is BadInput.
        Ctrl-C or SIGTERM stops the query at once (`_stoppable`)."""
        results = []

        def run() -> None:
            for statement in statements:
                result = self.con.execute(statement)
                described = result.description or []
                results.append(([d[0] for d in described], [d[1] for d in described], result.fetchall()))

        try:
            self._stoppable(run)
        except duckdb.OutOfMemoryException as exc:  # the machine's limit, not a mistake in the SQL
            raise EsperError(f"the query ran out of memory: {first_line(exc)}") from None
        except duckdb.Error as exc:
            if is_damaged_block(exc):  # the file's fault, not the SQL's
                raise
            raise bad_sql(exc) from None
        return results

    def _stoppable(self, run: Callable[[], None]) -> None:
        """`run()`, DuckDB work on this reader's connection, in a thread of its own while this one waits. DuckDB
        looks for a signal only between the tasks of a query, and one task of a large join can run for minutes:
        Ctrl-C would wait for it. Waiting here, the signal arrives at once, and `interrupt()` stops the query."""
        failed: list[BaseException] = []
        done = threading.Event()  # not Thread.join: a join cut short by a signal can report a running thread ended

        def work() -> None:
            try:
                run()
            except BaseException as exc:  # handed to the waiting thread, which raises it
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name="esper-query", daemon=True).start()
        try:
            done.wait()
        except BaseException:  # KeyboardInterrupt, Terminated
            self.con.interrupt()
            done.wait()
            raise
        if failed:
            raise failed[0]

    def resolve_run(self, run: str, training: bool = True) -> str:
        """The full run id for `run`, which may be a unique prefix; with `training`, it must be a training run
        (not a learner's stream of `PolicyUpdated` events, which only `export` and SQL read)."""
        if not run.strip():
            raise BadInput("an empty run id: give a run id or a unique prefix of one (try `esper runs`)")
        rows = self.con.execute(
            "SELECT DISTINCT run_id FROM events WHERE starts_with(run_id, ?) ORDER BY run_id", [run]
        ).fetchall()
        ids = [r[0] for r in rows]
        if len(ids) > 1 and run not in ids:
            more = ", ..." if len(ids) > 5 else ""
            raise BadInput(f"{run!r} matches {len(ids)} runs ({', '.join(ids[:5])}{more}); give more of the id")
        if not ids:
            file = (f"; {run} is a file: if it is an export of runs, `esper import {run}` adds them"
                    if os.path.isfile(run) else "")
            raise UnknownRun(f"no run {run!r} in this workspace (try `esper runs`){file}")
        run_id = run if run in ids else ids[0]
        if training and not self.con.execute(
            "SELECT count(*) FROM events WHERE run_id = ? AND type = 'RunStarted'", [run_id]
        ).fetchall()[0][0]:
            raise not_a_training_run(run_id)
        return run_id

    def read_run(self, run_id: str, after_seq: int = 0) -> list[Recorded]:
        return list(read_events(self.con, run_id, after_seq, table="events"))

    def snapshots(self, run_id: str, matching: bool = False) -> list["StoredSnapshot"]:
        """The run's stored snapshots, latest first. With `matching`, only those whose head matches the log (an
        event at that seq with that hash; NULL for NULL in an unsealed run): a snapshot of an altered or foreign
        head is left out. What is inside `state` the store neither reads nor checks: `esper replay` does
        (`esper.nissa.snapshot`)."""
        rows = self.con.execute(
            "SELECT s.seq, s.hash, s.state::VARCHAR, EXISTS (SELECT 1 FROM events e WHERE e.run_id = s.run_id"
            " AND e.seq = s.seq AND e.hash IS NOT DISTINCT FROM s.hash) FROM all_snapshots s WHERE s.run_id = ?"
            " ORDER BY s.seq DESC", [run_id]).fetchall()
        return [StoredSnapshot(*row) for row in rows if row[3] or not matching]

    def check_run(self, run_id: str) -> str | None:
        """Check the run's hash chain and every store's head of it; `LogAltered` names the first event changed,
        removed or inserted (or the cut tail). Returns a note when the run was written before the chain.
        Reads the run once: the cost is linear in the run, not in the workspace."""
        return self._checked_rows(run_id)[1]

    def read_checked(self, run_id: str) -> "CheckedRun":
        """The run's events once its chain and heads are checked (`check_run`), read and checked in one pass."""
        rows, unsealed = self._checked_rows(run_id)
        return CheckedRun(list(decode_rows(run_id, rows)), unsealed)

    def altered_runs(self, runs: list[str] | None = None) -> dict[str, str]:
        """Each run (of `runs`; None: all) whose log `check_run` refuses, with what it says: the runs' chains and
        heads checked in one pass over their events (a listing of every run costs one read, not one per run)."""
        among, chosen = ("WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [runs]) if runs is not None else ("", [])
        heads: dict[str, dict[str, tuple[int, str | None]]] = {}
        for run_id, seq, hash_, store in self.con.execute(f"SELECT run_id, seq, hash, _store FROM all_heads {among}",
                                                          chosen).fetchall():
            heads.setdefault(run_id, {})[store] = (seq, hash_)
        result = self.con.execute(f"SELECT run_id, {ROW_COLUMNS} FROM all_events {among} ORDER BY run_id, seq, position",
                                  chosen)
        altered = {}
        for run_id, rows in itertools.groupby(_fetched(result), key=lambda row: row[0]):
            try:
                self._check_chain(run_id, [row[1:] for row in rows], heads.get(run_id, {}))
            except LogAltered as exc:
                altered[run_id] = str(exc)
        return altered

    def _checked_rows(self, run_id: str) -> tuple[list[tuple], str | None]:
        """The run's rows (position, seq, event_id, epoch_us(ts), payload, ...) in seq order, its chain and heads
        checked, and the unsealed note (`check_run`)."""
        rows = self.con.execute(f"SELECT {ROW_COLUMNS} FROM all_events WHERE run_id = ? ORDER BY seq, position",
                                [run_id]).fetchall()
        heads = {store: (seq, hash_) for seq, hash_, store in self.con.execute(
            "SELECT seq, hash, _store FROM all_heads WHERE run_id = ?", [run_id]).fetchall()}
        return rows, self._check_chain(run_id, rows, heads)

    def _check_chain(self, run_id: str, rows: list[tuple], heads: dict[str, tuple[int, str | None]]) -> str | None:
        """`check_run` of the run's `rows` (`ROW_COLUMNS`, in seq order) and its `heads` (store → seq, hash); the
        unsealed note."""
        verifier = chain.Verifier(run_id)
        last: dict[str, tuple[int, str | None]] = {}  # store → the run's last event there (seq, hash)
        before = ""  # the store of the row before
        for _, seq, _, _, payload, type_, hash_, store, *columns in rows:
            if seq == verifier.seq and before:  # rows are in seq order: a repeat follows the first at its seq
                files = " and ".join(sorted({self.names[before], self.names[store]}))
                raise verifier.altered(seq, f"{type_}: a second event at this seq, held by {files}")
            verifier.feed(seq, type_, payload, hash_, columns)
            last[store], before = (seq, hash_), store
        for store in sorted(set(last) | set(heads)):
            if store not in self.anchored and not verifier.sealed:  # written before the chain: no heads table
                continue  # (a sealed run's store without one has lost it: its tail could have been cut unseen)
            held = last.get(store, (0, None))
            mine = chain.Verifier(run_id, held[0], held[1], where=f", {self.names[store]}")
            mine.sealed = verifier.sealed
            mine.end(heads.get(store), holder="the store")
        return None if verifier.sealed else chain.unsealed_note(run_id)

    def files_of(self, run_id: str) -> list[str]:
        """The names of the store files that hold the run's events."""
        rows = self.con.execute("SELECT DISTINCT _store FROM all_events WHERE run_id = ?", [run_id]).fetchall()
        return sorted(self.names[row[0]] for row in rows)

    def in_own_store(self, run_id: str) -> bool:
        """Whether the run's events are all in the store file named after it: the file one `esper run` writes,
        next to its checkpoints (an imported run shares the file it was imported into)."""
        return self.files_of(run_id) == [f"{run_id}{STORE_SUFFIX}"]

    def is_live(self, run_id: str) -> bool:
        row = self.con.execute("SELECT any_value(_store) FROM all_events WHERE run_id = ?", [run_id]).fetchall()[0]
        return row[0] in self.live_files

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_EXTENSION_LOADING = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
"""A reader's connection never loads a DuckDB extension on its own. Given a file of another engine's format (a SQLite
database named *.duckdb, say), ATTACH would load the extension that reads it, downloading it first: a read-only
command would reach the network and run native code Esper never shipped. With loading off such a file is one more
unreadable store, skipped with a note. (Only readers' in-memory connections: DuckDB refuses a second connection to a
file with another configuration than the first, so a Recorder's stays as a user's own `duckdb.connect` opens it.)"""


ROW_COLUMNS = "position, seq, event_id, epoch_us(ts), payload::VARCHAR, type, hash, _store, epoch, seed_id, slot"
"""A run's rows as `Reader` checks and decodes them (`decode_rows` reads the first five)."""


def _fetched(result: duckdb.DuckDBPyConnection, size: int = 10_000) -> Iterator[tuple]:
    """The rows of an executed query, a few thousand in memory at a time."""
    while rows := result.fetchmany(size):
        yield from rows


def is_damaged_block(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB finding a block of a file whose checksum does not match what was written."""
    return isinstance(exc, duckdb.Error) and "Corrupt database file" in str(exc)


def store_damaged(exc: BaseException, root: str | Path | None) -> StoreDamaged:
    """What `exc` (`is_damaged_block`) means for workspace `root`: the damaged store files named (`damaged_stores`,
    only once a command has met the damage)."""
    ws = Workspace.at(root)
    names = damaged_stores(ws, exc)
    which = f"store {', '.join(names)} is" if names else "a store file is"
    return StoreDamaged(f"{which} damaged ({first_line(exc)}): move it out of workspace {ws.root} to read the rest")


def damaged_stores(ws: Workspace, exc: BaseException | None = None) -> list[str]:
    """The names of `ws`'s damaged store files: the file holding the block `exc` names, where its words say which
    (`holding_block`), else each file in which DuckDB meets a damaged block reading every table whole. The first is
    exact where the second can miss: a query may read a block no scan of a table reads (a primary key's index, say).
    A file held by a live writer is not read."""
    if exc is not None and (found := holding_block(ws, str(exc))):
        return found
    found = []
    for path in ws.store_files():
        con = duckdb.connect(":memory:", config=NO_EXTENSION_LOADING)
        try:
            con.execute(f"ATTACH '{_quote(path)}' AS store (READ_ONLY)")
            tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'store'").fetchall()
            for (table,) in tables:
                con.execute(f'SELECT sum(hash(COLUMNS(*))) FROM store."{table}"').fetchall()
        except duckdb.Error as exc:
            if is_damaged_block(exc):
                found.append(path.name)
        finally:
            con.close()
    return found


BLOCK_DAMAGE = re.compile(r"stored checksum (\d+) in block at location (\d+)")
"""DuckDB's words for a damaged block: the checksum stored at the head of the block, and the block's offset in its file."""


def holding_block(ws: Workspace, message: str) -> list[str]:
    """The names of `ws`'s store files that hold, at the offset `message` names, the checksum it says was stored
    there: the file DuckDB was reading (its message names no file). None if `message` is not in those words."""
    words = BLOCK_DAMAGE.search(message)
    if words is None:
        return []
    stored, location = (int(words[1]) % 2**64).to_bytes(8, "little"), int(words[2])
    found = []
    for path in ws.store_files():
        try:
            with path.open("rb") as f:
                f.seek(location)
                if f.read(8) == stored:
                    found.append(path.name)
        except OSError:
            continue
    return found


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _held_by_writer(exc: BaseException) -> bool:
    """DuckDB's words for "another process (or this one) has this file open for writing"."""
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text or "already attached" in text
