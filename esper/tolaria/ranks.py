"""One run trained data-parallel by several processes (`torchrun --nproc-per-node N -m esper run ...`).

Rank 0 is the run: it plans it, runs the controller, judges every command and automatic transition in its
lifecycle, and alone appends events (one run, one stream, one writer). The other ranks follow: rank 0 sends them
the events it has decided (`Message`, at the start of every epoch and at the end), and each follower carries them
out on its own model through the same lifecycle fold, as a replay would. Every rank trains each step on its own
contiguous shard of the same batch (all ranks draw the same permutation and augmentation from the same seed).

How the ranks stay identical. Not with `DistributedDataParallel`: its gradient hooks are fixed when the model is
wrapped, while a run's parameters change at every germination, fossilization and cull, and a seed in TRAINING gets
its gradients from an isolated pass outside the model's backward (`torch.autograd.grad`), which DDP's hooks never
see. Instead, after each step's backward and isolated passes, every gradient the model holds (host, fossils,
blending and training seeds alike) is scaled by the rank's share of the batch and summed across ranks in one
all-reduce of one flat buffer (`reduce_gradients`): the sum is the gradient of the whole batch, whatever the
parameters are at that step. The sum is taken in float64 and rounded once to float32, so that it does not depend
on the order in which the all-reduce adds the ranks' parts (float64 holds a sum of a few float32 parts exactly
unless their magnitudes lie ~2^29 apart, and then only a tie in the last rounding could tell the orders apart).
Every rank then holds the same gradients and the same weights, so its optimizers (host and seeds) take the same
step and their states stay in step without being sent. Seeds are built from the global RNG, whose state travels
with each message, so a germination builds the same weights on every rank. The price against DDP: no overlap of
communication with the backward pass, and twice the bytes of a float32 all-reduce (a resnet18's 11M gradients:
88 MB a step instead of 44).

Buffers (BatchNorm's running statistics) are not gradients: each rank's follow its own shards during an epoch,
and at the epoch's end every rank takes rank 0's (what DDP does at every forward). Normalisation inside a step
uses the shard's statistics, as under DDP without SyncBatchNorm: numbers differ from one process by more than
rounding once a seed with BatchNorm trains, decisions rarely. At each epoch's end the ranks also compare a
checksum of their parameters' bytes; a difference fails the run on every rank ("ranks diverged").

Re-executed in one process. A sum of shards' gradients is not the whole batch's gradient to the last bit, and Adam
turns such last-bit differences into visibly different weights within an epoch (a 2-rank run's first validation
loss differed by 4e-4 from one process's). So `esper replay --verify` and `--resume` train a run recorded with
`RunStarted.ranks` = N the way its ranks did, one shard after another in this one process (`trainer.Computed`):
each shard's passes, its gradient scaled by its share (`scaled_gradients`), the parts summed in float64 as the
all-reduce sums them, and normalisation buffers as rank 0's (the ones every rank takes at the epoch's end). On CPU
that gives the ranks' numbers bit for bit.

Errors. Every collective runs under a timeout (`ESPER_RANKS_TIMEOUT` seconds, default 600), and a rank that
loses the others (a peer died, or timed out) fails with one line instead of waiting forever. A failure on rank 0
while the followers wait for its next message reaches them as a `Message` of kind `stop`; they end quietly with
its exit code, so the user reads the reason once, in rank 0's line.
"""

import contextlib
from datetime import timedelta
from typing import Iterable, Sequence

import msgspec
import torch
import torch.distributed as dist

from esper.errors import BadInput, RankBadInput, RunFailed, first_line
from esper.tolaria import launch
from esper.tolaria.inputs import examples_in, rows


class Message(msgspec.Struct, frozen=True):
    """What rank 0 sends the followers. `epoch`: train epoch `number` after carrying out `events`; `finish`:
    carry out `events`, the run is over; `stop`: the run failed on rank 0 (`error`, its exit `code`)."""

    kind: str
    number: int = 0
    events: list[bytes] = []
    """Each an encoded event (`esper.leyline.events.encode`), in the order rank 0 carried them out."""
    rng: bytes = b""
    """Rank 0's global torch RNG state before it carried out the first of `events` (seeds are built from it)."""
    error: str = ""
    code: int = 1


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """The slice `[start, stop)` of a batch of `n` that `rank` of `world` trains on: contiguous, sizes within one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """`rank`'s part of a batch: `(x, y, count, weight)`, `weight` its share of the batch's gradient. A rank whose
    part is empty (a batch smaller than the ranks) trains on the whole batch with weight 0, so that it computes the
    same gradients' shapes and joins the all-reduce with zeros."""
    n = examples_in(y)
    start, stop = shard_bounds(n, rank, world)
    if stop == start:
        return x, y, 0, 0.0
    return rows(x, start, stop), rows(y, start, stop), stop - start, (stop - start) / n


def scaled_gradients(parameters: Iterable[torch.nn.Parameter],
                     weight: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every gradient the parameters hold, and all of them scaled by `weight` (in float32, as computed) in one flat
    float64 buffer: a rank's part of the sum. Parameters without a gradient have none on any rank (the ranks hold
    the same model in the same stages)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return grads, torch.zeros(0, dtype=torch.float64)
    return grads, torch.cat([g.reshape(-1) for g in grads]).mul_(weight).double()


def set_gradients(grads: Sequence[torch.Tensor], summed: torch.Tensor) -> None:
    """The ranks' summed parts (`scaled_gradients`), rounded once to each gradient's dtype, into the gradients."""
    offset = 0
    for g in grads:
        g.copy_(summed[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class Ranks:
    """This process's place among the processes training one run, and the collectives they train with."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank = rank
        self.world = world
        self.device = device
        self.comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        """Where the tensors of a collective live: NCCL sends device memory, gloo host memory."""
        self.listening = True
        """Whether the followers wait for rank 0's next message (not inside an epoch's steps): only then can a
        failure on rank 0 be sent to them."""
        self.finished = False
        """Whether rank 0 has sent, or this follower received, the run's `finish`: the ranks then part together."""

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: str) -> "Ranks | None":
        """This process's place when `torchrun` started it as one of several (None when it runs alone): the process
        group joined (gloo on CPU, NCCL on CUDA, each rank on `cuda:LOCAL_RANK`). `BadInput` for a device the ranks
        cannot share, before joining (every rank reads the same command line, so every rank refuses alike)."""
        if (where := launch.place()) is None:
            return None
        rank, world = where.rank, where.world
        place = _rank_device(device, where.local)
        timeout = timedelta(seconds=where.timeout_s)
        if place.type == "cuda":
            torch.cuda.set_device(place)
        _import_before_the_group()
        try:
            dist.init_process_group("nccl" if place.type == "cuda" else "gloo", timeout=timeout, rank=rank,
                                    world_size=world, device_id=place if place.type == "cuda" else None)
        except (RuntimeError, ValueError) as exc:
            raise RunFailed(f"rank {rank} could not join the other {world - 1} rank(s): {first_line(exc)}") from None
        return cls(rank, world, place)

    def close(self) -> None:
        """Leave the process group, and end it: its gloo threads are joined here, while the interpreter is whole
        (`_import_before_the_group` says why that matters). After a finished run the ranks first wait for each
        other (a barrier): gloo's worker thread lets go of the `finish` message's tensors only after the broadcast
        has returned, and releasing a tensor Python made takes the GIL; blocked in the barrier, the rank frees the
        GIL and that thread finishes before the group is ended. A failed run parts at once: its ranks may be inside
        different collectives."""
        if not dist.is_initialized():
            return
        if self.finished:
            with contextlib.suppress(RuntimeError):  # a peer already gone: the run is over all the same
                dist.barrier()
        dist.destroy_process_group()

    # ---- messages from rank 0 --------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Rank 0: the message to every follower (who waits for it in `receive`)."""
        data = msgspec.msgpack.encode(message)
        self.listening = False  # until the epoch's end (`reduce_epoch`); after `finish` or `stop`, for good
        self._collective(self._broadcast_bytes, data)
        self.finished = message.kind == "finish"

    def receive(self) -> Message:
        """A follower: rank 0's next message."""
        message = msgspec.msgpack.decode(self._collective(self._broadcast_bytes, b""), type=Message)
        self.finished = message.kind == "finish"
        return message

    def release(self) -> None:
        """Rank 0, at its end: followers still waiting for a first message (rank 0 started no run) end too."""
        if self.leader and self.listening:
            self.send(Message("finish"))

    def stop(self, error: str, code: int) -> None:
        """Rank 0: tell the followers the run failed, if they are listening (inside an epoch's steps they are not:
        they notice rank 0's end as a lost peer). Never raises: rank 0 is failing already."""
        if self.leader and self.listening:
            try:
                self.send(Message("stop", error=error, code=code))
            except RunFailed:
                pass

    def _broadcast_bytes(self, data: bytes) -> bytes:
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm)
        dist.broadcast(size, src=0)
        if self.leader:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm)
        else:
            buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=self.comm)
        dist.broadcast(buffer, src=0)
        return data if self.leader else buffer.cpu().numpy().tobytes()

    # ---- training -------------------------------------------------------------------------------

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """This rank's part of a batch (`shard`)."""
        return shard(x, y, self.rank, self.world)

    def reduce_gradients(self, parameters: Iterable[torch.nn.Parameter], weight: float) -> None:
        """Every gradient, scaled by this rank's `weight` and summed over the ranks in one all-reduce (in float64):
        the gradient of the whole batch, the same on every rank."""
        grads, flat = scaled_gradients(parameters, weight)
        if not grads:
            return
        flat = flat.to(self.comm)
        self._collective(dist.all_reduce, flat)
        set_gradients(grads, flat.to(grads[0].device))

    def reduce_epoch(self, totals: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        """An epoch's end, on every rank: `totals` (float64 sums of this rank's shards) summed over the ranks;
        every floating buffer set to rank 0's; and the ranks' parameters compared (`RunFailed` on every rank if
        they differ). One all-reduce; afterwards the followers listen for rank 0's next message."""
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        mine = torch.zeros(self.world, dtype=torch.float64, device=totals.device)
        mine[self.rank] = _checksum(model.parameters(), totals.device)
        flat = [totals, mine]
        if buffers:
            values = torch.cat([b.detach().reshape(-1).double() for b in buffers])
            flat.append(values if self.leader else torch.zeros_like(values))
        summed = torch.cat(flat).to(self.comm)
        self._collective(dist.all_reduce, summed)
        summed = summed.to(totals.device)
        n = len(totals)
        sums, checksums = summed[:n], summed[n:n + self.world]
        offset = n + self.world
        for b in buffers:
            b.copy_(summed[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
        if (checksums != checksums[0]).any():  # every rank reads the same sums: all fail together
            raise RunFailed("ranks diverged: their parameters differ after the epoch (a bug of Esper's)")
        self.listening = True
        return sums

    def _collective(self, op, *args):
        """Run a collective; losing the other ranks (a peer ended, or the timeout passed) is one line, not a hang.
        That holds for gloo (CPU), whose collectives raise here. NCCL's return at once and fail later, in torch's
        NCCL watchdog, which may end the process itself after the timeout: on GPUs a lost rank can then stop the others
        with NCCL's message rather than this one, and the log end without `RunFailed` (`esper runs`: incomplete)."""
        try:
            return op(*args)
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds are RuntimeErrors
            raise RunFailed(f"rank {self.rank} lost the other ranks ({first_line(exc)})") from None


def _import_before_the_group() -> None:
    """Import torch's compiler (torch._dynamo) before the process group exists. The first optimizer imports it
    otherwise, and it then keeps references to the group that `destroy_process_group` cannot drop: the group and
    gloo's threads outlive `Ranks.close` into the interpreter's teardown. There a gloo thread that lets go of a
    tensor Python made must take the GIL, which a thread cannot do while the interpreter finalizes: the process
    aborts ("terminate called without an active exception", SIGABRT), and torchrun reports a finished run failed.
    Imported first, it holds no group, and `close` ends the group for good: its threads are joined there."""
    import torch._dynamo  # noqa: F401


def _rank_device(device: str, local_rank: int) -> torch.device:
    try:
        place = torch.device(device)
    except RuntimeError:
        raise BadInput(f"unknown device {device!r}: use cpu or cuda") from None
    if place.type == "cpu":
        return place
    if place.type != "cuda":
        raise BadInput(f"unsupported device {device!r} under torchrun: use cpu or cuda")
    if place.index is not None:
        raise BadInput(f"under torchrun each rank trains on cuda:LOCAL_RANK: pass --device cuda, not {device}")
    if not torch.cuda.is_available():
        raise BadInput("device cuda asked for, but CUDA is not available here (use cpu)")
    if local_rank >= torch.cuda.device_count():
        raise RankBadInput(f"the rank with LOCAL_RANK {local_rank} needs cuda:{local_rank}, and this machine has "
                       f"{torch.cuda.device_count()} CUDA device(s): start at most that many ranks per node")
    return torch.device("cuda", local_rank)


def _checksum(parameters: Sequence[torch.nn.Parameter] | Iterable[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """The sum of every parameter's bytes: any bit that differs between two ranks changes it (almost surely).
    Exact in float64 for models up to about 35 TB of parameters."""
    total = torch.zeros((), dtype=torch.int64, device=device)
    for p in parameters:
        total += p.detach().reshape(-1).view(torch.uint8).sum(dtype=torch.int64)
    return total.double()
