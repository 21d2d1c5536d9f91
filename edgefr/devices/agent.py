"""The measurement agent: times model files on the runtime where it runs, and prints JSON.

Self-contained on purpose (standard library + numpy + the runtime): the ssh transport copies this one file to a
board and runs it with the board's python, the local transport imports it. One code path measures everywhere.

Protocol (why each step): a warmup (caches, lazy allocations, XNNPACK packing); trials of several runs each, lasting
at least `trial_s` so a trial is long against clock resolution; the median of the trials (robust to preemption);
every model measured in `passes` passes, each in a new random order (so slow drifts and neighbours do not bias a
block); models whose passes disagree by more than `agree_tolerance` are measured again, up to `max_extra_passes`;
the value is the `statistic` over trials and over passes. The default statistic is the minimum: interference from
other work (shared caches, memory bandwidth, SMT siblings) only ever adds time, so on a shared host the fastest
trial is the best estimate of the undisturbed cost; measured here under load 5-9 on 2 cores, the median of
passes disagreed by 22% (median over blocks) while a quiet machine gave under 1%. Metric `thread_cpu` (the
calling thread's CPU time) is what makes this usable
on a shared host: with one intra-op thread both runtimes compute on the calling thread, and time spent preempted by
other work is not counted. Dedicated boards use `wall`.

Usage: python agent.py JOB.json  ->  stdout: result JSON; stderr: `progress DONE TOTAL` lines.
"""

from __future__ import annotations

import json
import platform
import random
import sys
import time

AGENT_VERSION = 1
DEFAULT_PROTOCOL = {"warmup_s": 0.05, "warmup_runs": 5, "trial_s": 0.02, "trials": 7, "passes": 2,
                    "agree_tolerance": 0.03, "max_extra_passes": 2, "statistic": "min"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    from importlib import metadata

    for dist in ("ai-edge-litert", "tflite-runtime", "tensorflow"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


# Session config entries an int8 ONNX graph needs wherever it runs, so every ONNX Runtime session edgefr opens sets
# them (measurement here, export checks) and the export report asks deployments to. x86 CPUs without VNNI multiply
# u8 x s8 with VPMADDUBSW, which saturates the sum of each product pair at 16 bits: on such a host (AVX2) the int8
# exports lost 0.9 pp LFW and a face's cosine to PyTorch fell to 0.65. This entry makes ORT turn the s8 weights
# into u8 at load time, exactly, and run the non-saturating U8U8 kernels, on those CPUs only; the file is unchanged.
ORT_CONFIG_ENTRIES = {"session.x64quantprecision": "1"}


def ort_session_options(threads: int | None = None):
    """onnxruntime.SessionOptions with `ORT_CONFIG_ENTRIES`; `threads`: one intra-op pool of that size, sequential
    execution and no spinning (a spinning thread burns the CPU time the `thread_cpu` metric counts)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in ORT_CONFIG_ENTRIES.items():
        options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _ort_runner(path: str, threads: int):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(path, ort_session_options(threads), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feed = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    return lambda: session.run(None, feed)


def _tflite_runner(path: str, threads: int):
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # boards that only have the older package
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"],
                           np.random.default_rng(0).standard_normal(detail["shape"]).astype(detail["dtype"]))
    return interpreter.invoke


RUNNERS = {"onnxruntime": _ort_runner, "tflite": _tflite_runner}
CLOCKS = {"thread_cpu": time.thread_time_ns, "wall": time.perf_counter_ns}


def time_model(run, clock, protocol: dict) -> float:
    """Median per-run milliseconds of `run` under `protocol`."""
    start, runs = clock(), 0
    while runs < protocol["warmup_runs"] or clock() - start < protocol["warmup_s"] * 1e9:
        run()
        runs += 1
    single_ns = max((clock() - start) / runs, 1.0)
    per_trial = max(1, int(protocol["trial_s"] * 1e9 / single_ns + 0.999))
    trials = []
    for _ in range(protocol["trials"]):
        t0 = clock()
        for _ in range(per_trial):
            run()
        trials.append((clock() - t0) / per_trial / 1e6)
    return reduce_samples(trials, protocol["statistic"])


def reduce_samples(values: list[float], statistic: str) -> float:
    if statistic == "min":
        return min(values)
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _relative_spread(values: list[float]) -> float:
    return (max(values) - min(values)) / max(min(values), 1e-9)


def run_passes(ids: list[str], measure_one, protocol: dict, seed: int = 0, progress=None) -> dict[str, dict]:
    """The pass schedule of the protocol, for any way of timing one model (`measure_one(id) -> ms`).

    Every id is measured `passes` times, each pass in a new random order; ids whose passes disagree by more than
    `agree_tolerance` get up to `max_extra_passes` more; the value is the protocol's statistic over passes.
    """
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {i: [] for i in ids}
    planned, done = len(ids) * protocol["passes"], 0

    def one_pass(subset: list[str]) -> None:
        nonlocal done
        order = subset[:]
        rng.shuffle(order)
        for model_id in order:
            samples[model_id].append(measure_one(model_id))
            done += 1
            if progress:
                progress(done, planned)

    for _ in range(protocol["passes"]):
        one_pass(ids)
    for _ in range(protocol["max_extra_passes"]):
        disagreeing = [i for i in ids if _relative_spread(samples[i]) > protocol["agree_tolerance"]]
        if not disagreeing:
            break
        planned += len(disagreeing)
        one_pass(disagreeing)
    return {i: {"ms": reduce_samples(values, protocol.get("statistic", "min")), "passes": values,
                "spread": _relative_spread(values)} for i, values in samples.items()}


def measure(job: dict, progress=None) -> dict:
    """Measure `job["models"]` ([{"id", "path"}]) and return {"results": {id: {"ms", "passes", "spread"}}, ...}."""
    protocol = {**DEFAULT_PROTOCOL, **job.get("protocol", {})}
    runtime, threads = job["runtime"], int(job.get("threads", 1))
    make_runner, clock = RUNNERS[runtime], CLOCKS[job.get("metric", "thread_cpu")]
    paths = {m["id"]: m["path"] for m in job["models"]}
    results = run_passes(list(paths), lambda i: time_model(make_runner(paths[i], threads), clock, protocol),
                         protocol, job.get("seed", 0), progress)
    return {"agent_version": AGENT_VERSION, "runtime": runtime, "runtime_version": runtime_version(runtime),
            "cpu": cpu_model(), "platform": platform.platform(), "threads": threads,
            "metric": job.get("metric", "thread_cpu"), "protocol": protocol, "results": results}


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        job = json.load(f)

    def report(done: int, total: int) -> None:
        print(f"progress {done} {total}", file=sys.stderr, flush=True)

    json.dump(measure(job, report), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
