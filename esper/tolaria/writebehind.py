"""Writing a run's batches behind its training.

Appending an epoch's events to a store costs a few milliseconds (DuckDB's insert and commit), about 2% of
an mnist1d epoch. DuckDB releases the GIL while it works, so a writer thread lets that time overlap the
next epoch's training instead of adding to it.

Batches are written in the order they were handed over, each in its own transaction, so the log always
holds whole epochs. After a write fails no later batch is written (the log would have a hole), and the
failure is raised to the run at its next hand-over or at `wait`. A run is acknowledged (its result
printed, its episodes read back) only after `wait`, so nothing acknowledged is ever lost.
"""

from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any


class WriteBehind:
    """One writer thread in front of one sink (anything with `append(batch)`)."""

    def __init__(self, sink: Any):
        self.sink = sink
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esper-writer")
        self._last: Future | None = None
        self._failure: BaseException | None = None

    def submit(self, batch: list) -> None:
        """Queue `batch` for writing; raises a failure of an earlier write instead."""
        self._raise_failure()
        self._last = self._writer.submit(self._write, batch)

    @property
    def failed(self) -> bool:
        """Whether a write has failed (no later batch is written)."""
        return self._failure is not None

    def wait(self) -> None:
        """Return once every batch handed over is written; raise the first failed write's error."""
        if self._last is not None:
            wait_for([self._last])
        self._raise_failure()

    def close(self) -> None:
        """Stop the thread once it has written (or skipped) every batch handed over; raises nothing, so it
        can run while another error unwinds (call `wait` first to see a failed write)."""
        self._writer.shutdown(wait=True)

    def _write(self, batch: list) -> None:
        if self._failure is None:
            try:
                self.sink.append(batch)
            except BaseException as exc:  # kept for the run's thread, which re-raises it
                self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
