"""The GPU check, prepared for a borrowed one-GPU machine: one script, under 4 minutes, one JSON summary on stdout.

Parts, in order, each bounded in time from the moment the script starts (a part that would start past the deadline is
reported as skipped; one that runs out of time inside stops and says so). Each part's result is also printed on
stderr as it ends (`gpu.py: <part> {json}`), so a run cut short keeps what it measured:
1. `pytest tests/test_cuda.py`: the CUDA tests (no host sync inside a step, bf16 by default, fp16's scaler,
   channels-last, lock-step streams, PPO on CUDA); counts of passed, failed and skipped.
2. Lock-step vs sequential at n = 1, 2, 4, 8 environments (`benchmarks/vectorized.py`'s two modes, heuristic runs
   of mnist1d, bf16): environment-epochs per second of each and the speed-up; whether both wrote the same events.
3. bf16 vs fp32: seconds per epoch of the cifar10 preset (ResNet host, augmentation, a seed in TRAINING, its
   validation) on CIFAR-10-sized synthetic data (45,000 + 5,000 images of 3×32×32). "fp32" is PyTorch's default
   on CUDA, where cuDNN's convolutions may use TF32: the summary says which (`fp32_convolutions`). Then a few steps
   under torch.profiler: milliseconds of GPU kernels and of wall clock per step, and kernel launches per step
   (`steps`: a `kernel_share` far below 1 means the step waits on Python and the launches, not on the GPU).
4. The command line on the device, as a user runs it: `esper run --device cuda` (a heuristic run that grows),
   `esper replay RUN --verify --exact` (re-executed from its log alone, every event bit for bit), and the same run
   killed mid-epoch (SIGKILL) and continued with `esper run --resume`: its result must equal the uninterrupted one.
5. With 2 GPUs or more: one run trained by 2 ranks under torchrun (NCCL); its time and that it wrote one run.

    python3 benchmarks/gpu.py                 # on the GPU machine, from the repository's root
    python3 benchmarks/gpu.py --cpu --quick   # every part on CPU, tiny (what tests/test_gpu_script.py runs)

The GPU machine has Python 3.12 and torch, but not msgspec, duckdb, transitions, cattrs, mnist1d or pydantic: the script
installs them from the wheels in `--wheels` (default `.whl`) into a folder of its own before importing Esper.
Fetch them here, where the network is, once: `python benchmarks/gpu.py --fetch-wheels` (the versions this
environment runs; `.whl/` must be ignored by git: `echo /.whl/ >> .git/info/exclude`). The device tool then runs
`python3 benchmarks/gpu.py` with `carry: [".whl"]`.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

STARTED = time.perf_counter()
"""The script's clock starts here: installing the wheels and importing torch count against its budget."""
ROOT = Path(__file__).resolve().parents[1]
SITE = Path(tempfile.gettempdir()) / "esper-gpu-site"
WHEELS = ("msgspec", "duckdb", "transitions", "cattrs", "mnist1d", "attrs", "typer", "click", "pydantic", "pydantic-core",
          "annotated-types", "typing-inspection", "typing-extensions")
"""What Esper needs beyond the GPU machine's own packages. The first five are missing there; attrs, typer, click and
typing-extensions are there but perhaps too old for cattrs and Esper's command line (which the two-rank part runs);
typer needs pydantic (and pydantic its three), which is not there."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def fetch_wheels(folder: Path) -> None:
    """Download, for CPython 3.12 on x86-64 Linux, the wheels of `WHEELS` at the versions installed here."""
    for name in WHEELS:
        version = importlib.metadata.version(name)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "-d", str(folder), f"{name}=={version}"]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        subprocess.run(command, check=True)
    print(f"wheels in {folder}: {', '.join(sorted(p.name for p in folder.glob('*.whl')))}", file=sys.stderr)


def ensure_dependencies(wheels: Path) -> None:
    """Make Esper importable here and in the subprocesses: the repository on the path, and the missing packages
    installed from `wheels` (pip, no network) into `SITE`. One line and exit 2 when they cannot be."""
    paths = [str(ROOT)]
    missing = [name for name in WHEELS[:5] if importlib.util.find_spec(name) is None]
    if missing:
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not found:
            sys.exit(f"gpu.py: {', '.join(missing)} not installed and no wheels in {wheels}: fetch them with "
                     "`python benchmarks/gpu.py --fetch-wheels` where pip has a network, and carry the folder")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                               "--upgrade", "--target", str(SITE), *map(str, found)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"gpu.py: installing the wheels failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        paths.insert(0, str(SITE))
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


class Clock:
    """The script's deadline, counted from its start: a part starts only if it can still end before it."""

    def __init__(self, budget: float):
        self.start = STARTED
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def timed(part, clock: Clock, needs: float, *args) -> dict:
    """Run one part if `needs` seconds are left; its summary with its wall time (or why it did not run)."""
    if clock.left() < needs:
        return {"skipped": f"out of time ({clock.left():.0f} s left, the part needs about {needs:.0f})"}
    began = time.perf_counter()
    try:
        out = part(*args)
    except Exception as exc:  # a part that breaks is reported, the others still run
        out = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    out["seconds"] = round(time.perf_counter() - began, 1)
    print(f"gpu.py: {part.__name__} {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def fits(clock: Clock, last_s: float, scale: float) -> bool:
    """Whether a step that should take `scale` times the `last_s` seconds of the one before still ends in time."""
    return last_s * scale < clock.left() - 5


# ---- 1. the CUDA tests ---------------------------------------------------------------------------


def cuda_tests(timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cuda.xml"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0", f"--junitxml={report}",
                   "tests/test_cuda.py"]  # one process: xdist's workers would each import torch for one file
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"pytest ran past {timeout:.0f} s"}
        out: dict = {"exit_code": done.returncode}
        if report.is_file():
            suite = ElementTree.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            out.update(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"])
            out["not_passed"] = [f"{case.get('name')}: {(child.get('message') or '').splitlines()[0][:200] if child.get('message') else child.tag}"
                                 for case in suite.iter("testcase") for child in case
                                 if child.tag in ("failure", "error")]
    if done.returncode not in (0, 5):  # 5: nothing collected
        out["tail"] = done.stdout.strip().splitlines()[-12:] + done.stderr.strip().splitlines()[-6:]
    return out


# ---- 2. lock-step vs sequential ------------------------------------------------------------------


def lockstep_vs_sequential(device: str, ns: list[int], epochs: int, clock: Clock) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from vectorized import lockstep, sequential  # the benchmark's own two modes

    from esper.leyline import RunConfig
    from esper.leyline.events import encode
    from esper.store import Recorder
    from esper.tolaria.data import load_task_data
    from esper.tolaria.loop import resolve_config

    config = resolve_config(RunConfig(controller="heuristic", epochs=epochs, seed=7, device=device))
    data = load_task_data(config.task, config.data_seed)
    results, identical, out = [], True, {}
    with tempfile.TemporaryDirectory() as tmp, Recorder(Path(tmp) / "lockstep.duckdb") as recorder:
        lockstep(config, 1, [device], recorder, "warmup", data)  # CUDA context, kernels, caches
        last_n, last_s = 1, 0.0
        for n in ns:
            if results and not fits(clock, last_s, n / last_n):
                out["stopped"] = f"out of time before n = {n}"
                break
            began = time.perf_counter()
            lock_s, _, lock_runs = lockstep(config, n, [device], recorder, f"n{n}", data)
            seq_s, _, seq_runs = sequential(config, n, [device], recorder, f"n{n}", data)
            for a, b in zip(lock_runs, seq_runs):
                identical &= [encode(r.event) for r in recorder.read(a)] == [encode(r.event) for r in recorder.read(b)]
            results.append({"n": n, "lockstep_env_epochs_per_s": round(n * epochs / lock_s, 2),
                            "sequential_env_epochs_per_s": round(n * epochs / seq_s, 2),
                            "speedup": round(seq_s / lock_s, 3)})
            last_n, last_s = n, time.perf_counter() - began
    return {"epochs_per_env": epochs, "precision": config.precision, "events_identical": identical, "results": results,
            **out}


# ---- 3. bf16 vs fp32 epochs ----------------------------------------------------------------------


def cifar_sized(train: int, val: int):
    """Synthetic data of CIFAR-10's shapes (standardised images, 10 classes), made on the CPU as the task's are."""
    import torch

    from esper.tolaria.data import Split, TaskData

    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator))

    return TaskData(task="cifar10", train=split(train), val=split(val), test=split(min(val, 1000)), num_classes=10)


def precision_epochs(device: str, precisions: list[str], train: int, val: int, clock: Clock) -> dict:
    """Seconds per epoch of the cifar10 preset at each precision: epoch 1 warms up (CUDA loads its kernels), a
    seed germinates, then epochs 2 and 3 are timed with it in TRAINING (its isolated pass in every step)."""
    import torch

    from esper.leyline import Germinate, RunConfig, Wait
    from esper.tolaria.loop import ListSink, Session, resolve_config, train_epoch

    data = cifar_sized(train, val)
    out: dict = {"train_images": train, "val_images": val}
    if device.startswith("cuda"):  # what "fp32" means there: TF32 convolutions unless turned off
        out["fp32_convolutions"] = "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
        out["fp32_matmul"] = torch.get_float32_matmul_precision()
    last_s = 0.0
    for precision in precisions:
        if last_s and not fits(clock, last_s, 2.0):  # fp32 may take twice bf16's time
            out["stopped"] = f"out of time before {precision}"
            break
        began = time.perf_counter()
        config = resolve_config(RunConfig(task="cifar10", epochs=3, seed=0, device=device, precision=precision,
                                          telemetry="minimal"))
        session = Session(config, ListSink(), data=data)
        try:
            seconds = []
            for epoch in range(1, 4):
                sync(device)
                began = time.perf_counter()
                session.begin_epoch()
                train_epoch(session)
                session.end_epoch()
                sync(device)
                seconds.append(time.perf_counter() - began)
                session.decide(Germinate(slot="mid", blueprint="conv_light") if epoch == 1 else Wait(), "static")
                session.settle()
            out[precision] = {"epoch_s": round(min(seconds[1:]), 3), "warmup_epoch_s": round(seconds[0], 3),
                              "channels_last": session.trainer.channels_last,
                              "training_seeds": session.trainer.model.training_seeds(),
                              "steps": profiled_steps(session.trainer, device, 2 if train < 1000 else 20)}
        finally:
            session.close()
        del session
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        last_s = time.perf_counter() - began
    if "bf16" in out and "fp32" in out:
        out["bf16_speedup"] = round(out["fp32"]["epoch_s"] / out["bf16"]["epoch_s"], 3)
    return out


def profiled_steps(trainer, device: str, steps: int) -> dict:
    """`steps` training steps of `trainer` (after its last epoch, outside any) under torch.profiler: wall and
    kernel milliseconds per step and kernel launches per step (kernels only on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    def batches():  # as many as asked for, however few the training set holds
        while True:
            yield from trainer.data.batches("train", trainer.preset.batch_size, trainer.generator)

    trainer.begin_epoch(trainer.config.epochs + 1)
    batches = batches()
    trainer.train_step(*next(batches))  # the profiler's own first-call costs stay out of the window
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        began = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(*next(batches))
        sync(device)
        wall = time.perf_counter() - began
    events = prof.key_averages()
    out = {"profiled": steps, "wall_ms_per_step": round(wall * 1e3 / steps, 3)}
    if cuda:
        kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
        out["kernel_ms_per_step"] = round(kernel_us / 1e3 / steps, 3)
        out["kernel_share"] = round(kernel_us / 1e6 / wall, 3)
        out["launches_per_step"] = round(sum(e.count for e in events if "LaunchKernel" in e.key
                                             or "LaunchCooperativeKernel" in e.key) / steps, 1)
    return out


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- 4. the command line ------------------------------------------------------------------------


def command_line(device: str, epochs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        def esper(*args: str, crash_at: str | None = None, workspace: str = "whole") -> subprocess.CompletedProcess:
            env = {**os.environ, **({"ESPER_CRASH_AT": crash_at} if crash_at else {})}
            return subprocess.run([sys.executable, "-m", "esper", *args, "--workspace", str(Path(tmp) / workspace)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)

        run = ["run", "--device", device, "--epochs", str(epochs), "--seed", "3", "--heuristic", "min_gain=1.0",
               "--heuristic", f"finish_epochs={epochs // 2}", "--json"]
        began = time.perf_counter()
        whole = esper(*run)
        out: dict = {"run": _command(whole, began)}
        if whole.returncode != 0:
            return out
        began = time.perf_counter()
        verified = esper("replay", out["run"]["result"]["run_id"], "--verify", "--exact")
        out["verify"] = _command(verified, began)
        crash = f"mid-epoch@{epochs // 2 + 1}"
        killed = esper(*run, crash_at=crash, workspace="killed")
        listed = esper("runs", "--json", workspace="killed")
        run_id = next((r["run_id"] for r in json.loads(listed.stdout or "[]")), None)
        out["resume"] = {"killed_at": crash, "killed_exit_code": killed.returncode}
        if run_id is None:
            return out
        began = time.perf_counter()
        resumed = esper("run", "--resume", run_id, "--json", workspace="killed")
        out["resume"].update(_command(resumed, began))
        same = {k: v for k, v in out["resume"].get("result", {}).items() if k != "run_id"}
        out["resume"]["same_result"] = same == {k: v for k, v in out["run"]["result"].items() if k != "run_id"}
    return out


def _command(done: subprocess.CompletedProcess, began: float) -> dict:
    """A command's exit code, the JSON object it printed last (if any), what it said on stderr as `esper: ...`."""
    out: dict = {"exit_code": done.returncode, "seconds": round(time.perf_counter() - began, 1)}
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            out["result"] = json.loads(line)
            break
        except ValueError:
            continue
    said = [line for line in done.stderr.splitlines() if line.startswith("esper: ") or line.startswith("verified")]
    if said:
        out["said"] = said[-3:]
    if done.returncode != 0:
        out["tail"] = done.stderr.strip().splitlines()[-8:]
    return out


# ---- 5. two ranks ------------------------------------------------------------------------------


def two_ranks(device: str, epochs: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as workspace:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "esper", "run", "--device", device, "--epochs", str(epochs), "--json", "--workspace", workspace]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"torchrun ran past {timeout:.0f} s"}
        stores = len(list(Path(workspace).glob("*.duckdb")))
    result = {}
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    ours = [line for line in done.stderr.splitlines() if line.startswith("esper: ")]
    out = {"exit_code": done.returncode, "stores": stores, "epochs": epochs, "result": result,
           **({"said": ours} if ours else {})}
    if done.returncode != 0:  # torchrun's own failures (rendezvous, a rank's crash) say nothing that starts with esper:
        out["tail"] = done.stderr.strip().splitlines()[-12:]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every part on CPU (no GPU needed)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script itself")
    parser.add_argument("--budget", type=float, default=230.0, help="seconds the whole script may take (default 230)")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of carried wheels (default .whl)")
    parser.add_argument("--fetch-wheels", action="store_true", help="download the wheels into --wheels, and exit")
    args = parser.parse_args()
    if args.fetch_wheels:
        fetch_wheels(args.wheels)
        return
    ensure_dependencies(args.wheels)
    import torch

    clock = Clock(args.budget)
    gpus = 0 if args.cpu or not torch.cuda.is_available() else torch.cuda.device_count()
    if not args.cpu and gpus == 0:
        sys.exit("gpu.py: no CUDA device here (pass --cpu to run the parts on CPU)")
    device = "cuda" if gpus else "cpu"
    quick = args.quick
    summary = {
        "device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus, "torch": torch.__version__,
        "python": sys.version.split()[0], "quick": quick,
        "cuda_tests": timed(cuda_tests, clock, 30, min(150.0, max(clock.left() - 60, 30))),
        "lockstep": timed(lockstep_vs_sequential, clock, 20, device, [1, 2] if quick else [1, 2, 4, 8], 1 if quick else 3,
                          clock),
        "precision": timed(precision_epochs, clock, 20, device, ["bf16", "fp32"],
                           64 if quick else 45_000, 32 if quick else 5_000, clock),
    }
    summary["command_line"] = timed(command_line, clock, 40, device, 6 if quick else 12, max(clock.left() - 30, 30))
    if gpus >= 2 or args.cpu:
        summary["two_ranks"] = timed(two_ranks, clock, 30, device, 1 if quick else 3, max(clock.left() - 5, 30))
    else:
        summary["two_ranks"] = {"skipped": f"{gpus} GPU(s): two ranks need two"}
    summary["seconds"] = round(time.perf_counter() - clock.start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
