"""Named points where a test has the process killed, to prove that a run survives a kill at any moment.

`ESPER_CRASH_AT=NAME@EPOCH` (e.g. `checkpoint-write@3`) sends SIGKILL to this process when it reaches the point
NAME during epoch EPOCH: nothing is cleaned up, exactly as when the machine or the OOM killer stops a run. The
points, in the order an epoch reaches them:

* `mid-epoch`: after the epoch's first training step;
* `trained`: the epoch trained and decided, its events not yet handed to the writer;
* `checkpoint-write`: the checkpoint file half written (a temporary file, not yet renamed into place);
* `checkpoint-written`: the checkpoint file in place, its `CheckpointSaved` not yet appended;
* `appended`: the epoch's events committed to the store;
* `finishing` (EPOCH: the last epoch): about to append `RunFinished`.

Unset (always, outside tests), `reach` costs one comparison.
"""

import os
import signal

_TARGET = os.environ.get("ESPER_CRASH_AT")


def reach(name: str, epoch: int) -> None:
    if _TARGET is not None and _TARGET == f"{name}@{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)
