"""The adb transport: time TFLite models on an Android phone with TFLite's official `benchmark_model` binary.

NOT TESTED END TO END: there is no phone (nor emulator) on the development and CI hosts. What can be tested without
one is: the command line (`benchmark_command`) and the output parser (`parse_benchmark_output`, checked against
benchmark_model's output format in tests/data/benchmark_model_output.txt) are pure functions, and the adb calls
around them are thin.

One measure: check that the phone is attached (`adb get-state`); push each model once to `remote_dir`, named by its
content hash (pushed as NAME.part and renamed, so an interrupted push is never taken for a model); read the phone's
model and SoC (`getprop`) and the benchmark binary's sha256 (which build measured); then run benchmark_model once per
model per pass, each pass in a new random order, as the agent's protocol does.

Protocol mapping (benchmark_model has no trials; it reports the mean of single runs):
  warmup_runs, warmup_s  -> --warmup_runs, --warmup_min_secs
  trials, trial_s        -> --num_runs=trials, --min_secs=trials*trial_s (at least as many runs, and at least as
                            long, as the agent's trials)
  passes, agree_tolerance, max_extra_passes -> repeated benchmark_model runs; the value is the median over passes.
A pass's value is benchmark_model's `Inference (avg)`: WALL-CLOCK time, whatever the device's `metric` says
(benchmark_model cannot read thread CPU time). Op profiling is on in every pass so that each result carries a
per-op-type summary (`ops`); it costs two timestamps per op per run.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgefr.devices.agent import AGENT_VERSION, run_passes
from edgefr.devices.spec import Device
from edgefr.devices.transports import ProgressFn, content_addressed_name, rename_uploads
from edgefr.errors import EdgefrError

# adb shell calls other than the benchmark (ls, mv, getprop) finish in well under this.
QUICK_COMMAND_S = 30
# A push over USB 2 of a model of a few MB; more is allowed per byte at this slowest rate.
MIN_PUSH_BYTES_PER_S = 1_000_000
# One benchmark_model run: initialisation, then warmup and regular runs, each stopped by benchmark_model's default
# --max_secs of 150 s.
BENCHMARK_TIMEOUT_S = 60 + 2 * 150

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan"  # what C++ streams print for a double
_LOG_PREFIX = re.compile(r"^(?:INFO|WARN|WARNING|ERROR): ")  # recent versions prefix log lines with their level
_TIMINGS_LINE = re.compile(rf"Inference timings in us: Init: (?P<init>{_NUMBER}), "
                           rf"First inference: (?P<first>{_NUMBER}), Warmup \(avg\): (?P<warmup>{_NUMBER}), "
                           rf"Inference \(avg\): (?P<inference>{_NUMBER})")
# A `Stat` line; the order of its fields changed between versions (`count= first= curr= ...`, `curr= count= ...`).
_STAT_LINE = re.compile(r"(?:count|curr)=")
_STAT_FIELD = re.compile(rf"(\w+)=({_NUMBER})")
# A node type may contain spaces and commas (XNNPACK's "Convolution (NHWC, QC8) IGEMM"): the numbers anchor the row.
_NODE_TYPE_ROW = re.compile(rf"\s*(?P<type>\S.*?)\s+(?P<count>\d+)\s+(?P<avg_ms>{_NUMBER})"
                            rf"\s+(?P<avg_percent>{_NUMBER})%\s+(?P<cdf_percent>{_NUMBER})%"
                            rf"\s+(?P<mem_kb>{_NUMBER})\s+(?P<times_called>\d+)\s*")
REGULAR_RUNS_PROFILE = "Operator-wise Profiling Info for Regular Benchmark Runs:"
NODE_TYPE_SUMMARY = "Summary by node type"


@dataclass(frozen=True)
class BenchmarkReport:
    """What one benchmark_model run printed, in milliseconds."""

    init_ms: float
    first_ms: float
    warmup_avg_ms: float
    inference_avg_ms: float
    regular_runs: dict[str, float]  # the regular runs' statistics line (count, first, curr, min, max, avg, std; in ms)
    ops: dict[str, dict]  # node type -> count, avg_ms, avg_percent, cdf_percent, mem_kb, times_called (regular runs)

    def as_dict(self) -> dict:
        return {"init_ms": self.init_ms, "first_ms": self.first_ms, "warmup_avg_ms": self.warmup_avg_ms,
                "inference_avg_ms": self.inference_avg_ms, "regular_runs": self.regular_runs}


def _stat_line(line: str) -> dict[str, float]:
    """`count=117 first=1203 ... std=38` (microseconds) -> {"count": 117, "first": 1.203, ...} (milliseconds)."""
    return {key: int(value) if key == "count" else float(value) / 1000 for key, value in _STAT_FIELD.findall(line)}


def _node_type_summary(lines: list[str]) -> dict[str, dict]:
    """The rows of the `Summary by node type` table that starts at `lines[0]`, up to the blank line that ends it."""
    ops = {}
    for line in lines[1:]:
        if not line.strip():
            break
        row = _NODE_TYPE_ROW.fullmatch(line)
        if row:  # the header line `[Node type] [count] ...` does not match
            ops[row["type"]] = {"count": int(row["count"]), "avg_ms": float(row["avg_ms"]),
                                "avg_percent": float(row["avg_percent"]), "cdf_percent": float(row["cdf_percent"]),
                                "mem_kb": float(row["mem_kb"]), "times_called": int(row["times_called"])}
    return ops


def parse_benchmark_output(text: str) -> BenchmarkReport:
    """Parse benchmark_model's stdout+stderr: the `Inference timings in us: ...` line, the `count=... avg=... std=...`
    line of the regular runs (the second Stat line: the first is the warmup's) and, with --enable_op_profiling, the
    `Summary by node type` table of the regular runs (not the one of the initialisation profile before it)."""
    lines = [_LOG_PREFIX.sub("", line) for line in text.splitlines()]
    timings = next((match for match in map(_TIMINGS_LINE.search, lines) if match), None)
    if timings is None:
        raise EdgefrError("benchmark_model printed no `Inference timings in us` line")
    stat_lines = [line for line in lines if _STAT_LINE.match(line)]
    ops: dict[str, dict] = {}
    if REGULAR_RUNS_PROFILE in lines:
        profile = lines[lines.index(REGULAR_RUNS_PROFILE):]
        start = next((i for i, line in enumerate(profile) if NODE_TYPE_SUMMARY in line), None)
        if start is not None:
            ops = _node_type_summary(profile[start:])
    return BenchmarkReport(init_ms=float(timings["init"]) / 1000, first_ms=float(timings["first"]) / 1000,
                           warmup_avg_ms=float(timings["warmup"]) / 1000,
                           inference_avg_ms=float(timings["inference"]) / 1000,
                           regular_runs=_stat_line(stat_lines[1]) if len(stat_lines) > 1 else {}, ops=ops)


def _seconds_flag(seconds: float) -> str:
    return f"{seconds:g}"


def benchmark_command(device: Device, remote_model: str) -> list[str]:
    """The adb command line that runs benchmark_model on `remote_model` under the device's threads and protocol."""
    protocol = device.protocol
    # adb joins the words after `shell` into one line for the phone's shell, hence the quoting.
    return ["adb", "-s", device.serial, "shell", shlex.quote(device.benchmark_binary),
            f"--graph={shlex.quote(remote_model)}",
            f"--num_threads={device.threads}",
            f"--warmup_runs={protocol['warmup_runs']}",
            f"--warmup_min_secs={_seconds_flag(protocol['warmup_s'])}",
            f"--num_runs={protocol['trials']}",
            f"--min_secs={_seconds_flag(protocol['trials'] * protocol['trial_s'])}",
            "--enable_op_profiling=true"]


class AdbTransport:
    def __init__(self, device: Device):
        self.device = device
        self.last_pushed: list[str] = []  # remote names the latest measure pushed (the others were already there)

    def measure(self, models: dict[str, Path], seed: int = 0, progress: ProgressFn | None = None) -> dict:
        self._check_attached()
        remote_models = self._push_models({model_id: Path(path) for model_id, path in models.items()})
        phone = self._phone_description()
        reports: dict[str, BenchmarkReport] = {}

        def benchmark(model_id: str) -> float:
            reports[model_id] = self._benchmark(model_id, remote_models[model_id])
            return reports[model_id].inference_avg_ms

        protocol = self.device.protocol
        results = run_passes(list(models), benchmark, protocol, seed, progress)
        for model_id, result in results.items():
            result.update(ops=reports[model_id].ops, benchmark=reports[model_id].as_dict())
        return {"agent_version": AGENT_VERSION, "runtime": "tflite", **phone, "threads": self.device.threads,
                "metric": "wall", "protocol": protocol, "results": results}

    def _adb(self, *args: str, timeout: float, step: str) -> str:
        """Run `adb -s SERIAL ARGS...`; its output (stdout and stderr), or a one-line EdgefrError."""
        return self._run(["adb", "-s", self.device.serial, *args], timeout, step)

    def _run(self, argv: list[str], timeout: float, step: str) -> str:
        if shutil.which(argv[0]) is None:
            raise EdgefrError(f"device {self.device.name}: no `adb` on this machine; install Android platform-tools "
                              "(apt-get install adb) and put adb on PATH")
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgefrError(f"device {self.device.name}: {step} on phone {self.device.serial} did not finish "
                              f"within {timeout:.0f}s; check the phone (awake, not too hot) and the USB link") from None
        if result.returncode != 0:
            lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
            raise EdgefrError(f"device {self.device.name}: {step} on phone {self.device.serial} failed: "
                              f"{lines[-1] if lines else f'exit status {result.returncode}'}")
        return result.stdout

    def _check_attached(self) -> None:
        try:
            self._adb("get-state", timeout=QUICK_COMMAND_S, step="adb get-state")
        except EdgefrError as exc:
            raise EdgefrError(f"{exc}; is the phone attached with USB debugging allowed? (see `adb devices`; set "
                              "`serial` in the device file)") from None

    def _push_models(self, models: dict[str, Path]) -> dict[str, str]:
        """Push the models the phone lacks; {id: path on the phone}."""
        remote_dir = self.device.remote_dir
        names = {}
        for model_id, path in models.items():
            if not path.is_file():
                raise EdgefrError(f"device {self.device.name}: model file {path} for {model_id!r} does not exist")
            names[model_id] = content_addressed_name(path)
        listing = self._adb("shell", f"mkdir -p {shlex.quote(remote_dir)} && ls -1 {shlex.quote(remote_dir)}",
                            timeout=QUICK_COMMAND_S, step=f"creating {remote_dir}")
        present = set(listing.split())
        local = {names[model_id]: path for model_id, path in models.items()}
        self.last_pushed = sorted(name for name in local if name not in present)
        for name in self.last_pushed:
            size = local[name].stat().st_size
            self._adb("push", str(local[name]), f"{remote_dir}/{name}.part",
                      timeout=QUICK_COMMAND_S + size / MIN_PUSH_BYTES_PER_S, step=f"pushing {local[name].name}")
        if self.last_pushed:
            self._adb("shell", " && ".join([f"cd {shlex.quote(remote_dir)}", *rename_uploads(self.last_pushed)]),
                      timeout=QUICK_COMMAND_S, step=f"renaming pushed models in {remote_dir}")
        return {model_id: f"{remote_dir}/{name}" for model_id, name in names.items()}

    def _phone_description(self) -> dict:
        """cpu (phone model and SoC), platform (Android release) and runtime_version (benchmark binary's sha256)."""
        binary = self.device.benchmark_binary
        output = self._adb("shell", "getprop ro.product.model; getprop ro.soc.model; getprop ro.build.version.release; "
                           f"sha256sum {shlex.quote(binary)} 2>/dev/null || echo missing",
                           timeout=QUICK_COMMAND_S, step="reading the phone's properties")
        model, soc, release, checksum = (output.splitlines() + ["", "", "", ""])[:4]
        digest = checksum.split()[0] if checksum.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            serial = self.device.serial
            raise EdgefrError(f"device {self.device.name}: no benchmark_model at {binary} on phone {serial}; "
                              "download TFLite's prebuilt benchmark_model for the phone's ABI (e.g. "
                              f"android_aarch64_benchmark_model), then: adb -s {serial} push benchmark_model {binary} "
                              f"&& adb -s {serial} shell chmod +x {binary}")
        return {"runtime_version": f"benchmark_model sha256:{digest[:16]}",
                "cpu": f"{model.strip()} ({soc.strip()})" if soc.strip() else model.strip(),
                "platform": f"Android {release.strip()}"}

    def _benchmark(self, model_id: str, remote_model: str) -> BenchmarkReport:
        step = f"benchmark_model on {model_id}"
        output = self._run(benchmark_command(self.device, remote_model), BENCHMARK_TIMEOUT_S, step)
        try:
            return parse_benchmark_output(output)
        except EdgefrError as exc:
            errors = [line.strip() for line in output.splitlines() if "ERROR" in line]
            raise EdgefrError(f"device {self.device.name}: {step}: {exc} "
                              f"({errors[0] if errors else 'no ERROR line in its output'})") from None
