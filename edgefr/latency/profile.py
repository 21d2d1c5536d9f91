"""`edgefr profile`: measure every block of the search space on a device and write its latency table.

Long on purpose (minutes per device), so it checkpoints: blocks are converted and measured in chunks, and each
measured chunk is saved to `<table>.partial.json`; a rerun resumes from it. Chunks measured in a slow spell of
the machine (told by reference blocks measured in every chunk) are measured again at the end. Whole nets
measured last fit the calibration (see `calibration.py`), together with a sample of the table's own blocks
measured again ("anchors"): a shared machine's speed drifts by several percent within minutes (on this host the
same 30 nets, measured 3 to 30 minutes apart, moved by up to 7%), so the calibration nets' times are first
brought back to the machine state the blocks were measured in. The scales then hold what whole graphs do
differently from their blocks, not the moment the calibration ran.
"""

from __future__ import annotations

import datetime
import functools
import random
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from edgefr.devices.agent import cpu_model, runtime_version
from edgefr.devices.spec import Device
from edgefr.devices.transports import open_transport
from edgefr.errors import EdgefrError
from edgefr.latency.calibration import fit_calibration
from edgefr.latency.lut import LatencyTable, check_table_matches, load_table
from edgefr.latency.models import ConversionPool, ModelFileCache, context_key, converter_versions
from edgefr.paths import latency_tables_dir
from edgefr.space.arch import Arch
from edgefr.space.blocks import BlockSpec
from edgefr.space.registry import resolve_arch
from edgefr.space.searchspace import SearchSpace

CALIBRATION_SEED = 12345  # benchmarks sample with other seeds, so calibration nets are not test nets
MIN_CALIBRATION_NETS = 4  # three coefficients (two scales, one offset) need more nets than unknowns
# Measured on host-ort (60 held-out random nets): fitted on 12 nets the calibration predicted them with 7.9% MAPE
# (67% within 10%); fitted on 42, 4.6% (93%). Richer groupings (per block kind, resolution, activation x
# resolution) did not beat per-activation scales; more nets did.
DEFAULT_CALIBRATION_NETS = 40
ANCHOR_BLOCKS = 24  # table blocks measured again beside the calibration nets, to read the machine's current speed
ANCHOR_PREFIX = "anchor:"
# A shared host has slow spells (see CONFIRM_AFTER_S) long enough to cover a whole measurement call of a profile
# (a chunk of blocks). Every call also measures the same few reference blocks; a call whose references ran over
# SLOW_CALL_FACTOR x their median time over the calls was made in a spell, and the entries measured only in such
# calls are measured again after the sweep (each keeps its fastest call), up to REMEASURE_ROUNDS times.
REFERENCE_BLOCKS = 5
REFERENCE_PREFIX = "reference:"
SLOW_CALL_FACTOR = 1.06
REMEASURE_ROUNDS = 2
# Whether a table is this machine's. The CPU name is not enough: virtual machines here report "AMD EPYC" for an
# AVX-512 host and for an AVX2-only one, and on the second the first one's host-ort blocks ran 4.5x their table
# times (per block 3.1x to 4.8x). A shared machine drifts by well under 10% (README, *Latency prediction accuracy*),
# so a sample of the table's blocks running 1.5x off their table times means another machine, and the table must
# be measured again: a uniform rescale would keep the other machine's relative block costs.
SPEED_CHECK_BLOCKS = 12
OTHER_MACHINE_FACTOR = 1.5
ALTERNATES_FOLDER = "alternates"


def calibration_archs(space: SearchSpace, count: int, embedding: int) -> list[Arch]:
    """Named MobileFaceNet variants (the nets users start from) plus seeded random points of the space."""
    named = [resolve_arch(n) for n in ("mobilefacenet", "mobilefacenet_relu", "mobilefacenet_w050_d050_relu",
                                       "mobilefacenet_w125")]
    rng = random.Random(CALIBRATION_SEED)
    sampled = [space.sample(rng, name=f"calibration-{i}", embedding=embedding) for i in range(count)]
    archs = [a for a in named if a.embedding == embedding] + sampled
    return archs[:count]


def covered_calibration_archs(space: SearchSpace, count: int, embedding: int, blocks: set[str]) -> list[Arch]:
    """The `calibration_archs` made only of `blocks` (keys): those a table of these blocks can calibrate with."""
    return [a for a in calibration_archs(space, count, embedding) if {s.key for s in a.block_specs()} <= blocks]


# A shared host has slow spells: the models of one agent call measured 7-29% slow, lasting seconds to ~40 s
# (README, *Meeting the budget, measured*). Where one call decides something, a second call this long after it
# confirms it, and the value is the minimum over the calls (the agent's rule over trials: interference only adds
# time).
CONFIRM_AFTER_S = 10.0


def measure_files(device: Device, files: dict[str, Path], seed: int, label: str, progress_bar: bool = True) -> dict:
    transport = open_transport(device)
    with tqdm(total=len(files) * device.protocol["passes"], desc=label, unit="model", leave=False,
              disable=not progress_bar) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = max(bar.total, total)
            bar.update(done - bar.n)

        return transport.measure(files, seed=seed, progress=progress)


def measure_network(device: Device, arch: Arch) -> float:
    """Convert `arch` with the device's deployment flow (cached) and measure it whole on the device, in ms."""
    return measure_networks(device, {arch.name: arch}, f"measure {arch.name}")[arch.name]


def measure_networks(device: Device, archs: dict[str, Arch], label: str, calls: int = 1) -> dict[str, float]:
    """Several whole nets measured in each of `calls` agent calls (one upload, interleaved passes): id -> the
    fastest of its calls' ms. A spell of load on a shared host can outlast one call's interleaving and slow one
    net more than another (once 1.27x between two nets of equal speed); a second call rarely meets it again."""
    cache = ModelFileCache(device.runtime, device.dtype)
    files = {key: cache.network(arch) for key, arch in archs.items()}
    per_call = [measure_files(device, files, 0, label)["results"] for _ in range(calls)]
    return {key: min(results[key]["ms"] for results in per_call) for key in archs}


def _device_record(device: Device, result: dict) -> dict:
    return {**device.summary(), "runtime_version": result["runtime_version"], "cpu": result["cpu"],
            "platform": result.get("platform", "")}


def _new_table(device: Device, space: SearchSpace) -> LatencyTable:
    device_record = device.summary()
    if device.transport == "local":
        device_record.update(runtime_version=runtime_version(device.runtime), cpu=cpu_model())
    return LatencyTable(device=device_record, space=space.name, protocol=dict(device.protocol),
                        converter=converter_versions())


def _resume_or_new(device: Device, space: SearchSpace, out: Path, partial: Path, fresh: bool, extend: bool,
                   log=print) -> LatencyTable:
    """Continue a partial run, or (`extend`) extend an existing table of the same device, converter and machine
    (its blocks measured again at their table speed); else start anew."""
    for candidate in (partial, out) if extend else (partial,):
        if fresh or not candidate.is_file():
            continue
        try:
            table = load_table(candidate)
            check_table_matches(table, device)
        except EdgefrError:
            continue
        if table.space == space.name and table.converter == converter_versions() and table.entries:
            speed = speed_against_table(device, table)
            if speed["other_machine"]:
                log(f"{table.where}: its blocks run {speed['factor']:.2f}x their table times on {device.name} "
                    f"(median of {speed['anchors']}): measured on another machine; profiling afresh")
                continue
            known = {s.key for s in space.all_block_specs()}
            table.entries = {k: v for k, v in table.entries.items() if k in known}
            return table
    return _new_table(device, space)


def _entry(spec: BlockSpec, measured: dict) -> dict:
    """A block's table entry; `ms` (less its context's time) is set by the caller, which knows the contexts."""
    entry = {**measured, "measured_ms": measured["ms"], "block": spec.as_dict()}
    if spec.kind != "stem":
        entry["context"] = context_key(spec.res, spec.cin)
    return entry


def seeded_sample(keys, count: int, seed: int) -> list[str]:
    """`count` of the block `keys`, drawn by `seed`: the same draw for the same keys in whatever order."""
    keys = sorted(keys)
    random.Random(seed).shuffle(keys)
    return keys[:count]


def anchor_blocks(table: LatencyTable, archs: list[Arch], count: int, seed: int) -> list[BlockSpec]:
    """A seeded sample of the blocks the calibration nets are made of (those the calibration must agree with)."""
    specs = {spec.key: spec for arch in archs for spec in arch.block_specs() if spec.key in table.entries}
    return [specs[key] for key in seeded_sample(specs, count, seed)]


def machine_state(table: LatencyTable, measured_now: dict[str, float]) -> dict:
    """How fast the machine runs now against when the table's blocks were measured: the median ratio of the
    blocks' times now (`measured_now`, at least one) to their table times."""
    ratios = sorted(ms / table.entries[key]["measured_ms"] for key, ms in measured_now.items())
    return {"factor": statistics.median(ratios), "anchors": len(ratios),
            "ratio_range": [ratios[0], ratios[-1]]}


def speed_against_table(device: Device, table: LatencyTable, seed: int = 0) -> dict:
    """`machine_state` of the device now against `table`: a seeded sample of its blocks converted (cached) and
    measured again; plus `other_machine`, whether they ran more than OTHER_MACHINE_FACTOR off their table times."""
    specs = [BlockSpec.from_dict(table.entries[key]["block"])
             for key in seeded_sample(table.entries, SPEED_CHECK_BLOCKS, seed)]
    cache = ModelFileCache(device.runtime, device.dtype)
    # No progress bar: seconds long, and it precedes one-line errors (an unreachable budget) on stderr.
    result = measure_files(device, {spec.key: cache.block(spec) for spec in specs}, seed, "", progress_bar=False)
    state = machine_state(table, {spec.key: result["results"][spec.key]["ms"] for spec in specs})
    return {**state, "other_machine": not 1 / OTHER_MACHINE_FACTOR <= state["factor"] <= OTHER_MACHINE_FACTOR}


def alternate_table_paths(table_name: str) -> list[Path]:
    """Tables of a device measured on other machines, shipped beside its main table as
    `<tables>/alternates/<device>@<machine>.json`: hosts that share a CPU name and runtime can still differ in
    speed (the AVX-512 and the AVX2 "AMD EPYC" hosts here), and a host like one of them can use its table."""
    return sorted((latency_tables_dir() / ALTERNATES_FOLDER).glob(f"{table_name}@*.json"))


def table_of_this_machine(device: Device, paths: list[Path]) -> tuple[Path, dict] | None:
    """The first of `paths` that is a table of `device` (runtime version, CPU name) whose blocks run at their
    table speed here (`speed_against_table`), with that speed; None if none is."""
    from edgefr.latency import load_device_table

    for path in paths:
        try:
            table = load_device_table(device, path)
        except EdgefrError:
            continue
        speed = speed_against_table(device, table)
        if not speed["other_machine"]:
            return path, speed
    return None


def call_states(calls: list[dict]) -> list[float]:
    """Per measurement call, how slow the machine ran in it: the median over its reference blocks of their time
    in it to their median time over the calls (1.0: the profile's typical state). The median, not the fastest
    call: a spell is an excursion from the state most calls ran in, and one fast call must not make the rest
    look slow."""
    times: dict[str, list[float]] = {}
    for call in calls:
        for key, ms in call["reference_ms"].items():
            times.setdefault(key, []).append(ms)
    typical = {key: statistics.median(values) for key, values in times.items()}
    return [statistics.median(ms / typical[key] for key, ms in call["reference_ms"].items())
            if call["reference_ms"] else 1.0 for call in calls]


def measured_only_in_slow_calls(table: LatencyTable) -> dict[str, float]:
    """The table's entries and contexts none of whose measurement calls ran at most SLOW_CALL_FACTOR x the typical
    state, each with the state of its least slow call."""
    best: dict[str, float] = {}
    for call, state in zip(table.calls, call_states(table.calls)):
        for key in call["models"]:
            best[key] = min(best.get(key, state), state)
    return {key: state for key, state in sorted(best.items())
            if state > SLOW_CALL_FACTOR and (key in table.entries or key in table.contexts)}


def _faster(old: dict | None, new: dict, value: str) -> dict:
    """The faster of an earlier measurement (None: none) and a new one, holding the times of all (`calls_ms`)."""
    times = ([] if old is None else old.get("calls_ms", [old[value]])) + [new[value]]
    kept = old if old is not None and old[value] <= new[value] else new
    return {**kept, "calls_ms": times}


def _block_requests(specs: list[BlockSpec], contexts: dict[str, tuple[int, int]]) -> dict[str, tuple]:
    """Model file requests (see `ModelFileCache.files`) of blocks and contexts (key -> (res, channels))."""
    requests = {spec.key: ("block", spec) for spec in specs}
    requests.update({key: ("context", res, channels) for key, (res, channels) in contexts.items()})
    return requests


def _contexts_of(specs: list[BlockSpec]) -> dict[str, tuple[int, int]]:
    return {context_key(spec.res, spec.cin): (spec.res, spec.cin) for spec in specs if spec.kind != "stem"}


def lanes_beside_measurement(device: Device, pool: ConversionPool) -> int:
    """How many conversions may run while `device` measures: all the pool's on a board (the host is idle); on
    this host one, where its measuring threads leave a core free. One conversion beside a measurement was measured
    harmless (see `ConversionPool`); several, on a host with more cores, would share its caches and memory
    bandwidth unmeasured."""
    return pool.workers if device.transport != "local" else min(1, max(0, pool.workers - device.threads))


def _measure_call(device: Device, table: LatencyTable, cache: ModelFileCache, pool: ConversionPool,
                  specs: list[BlockSpec], contexts: dict[str, tuple[int, int]], references: list[BlockSpec],
                  seed: int, label: str, status=lambda text: None, convert_next=lambda: None) -> None:
    """Measure blocks `specs` and contexts (key -> (res, channels)) in one agent call beside the reference blocks;
    every entry and context keeps the faster of this and its earlier measurements; the call is recorded.
    `convert_next()` starts converting what comes after, once this call's files are ready."""
    requests = _block_requests(specs, contexts)
    requests.update({REFERENCE_PREFIX + spec.key: ("block", spec) for spec in references})
    files = cache.files(requests, pool, lambda key: status(f"converted {key}"))
    convert_next()
    status("measure")
    result = measure_files(device, files, seed, label)
    measured = result["results"]
    table.device = _device_record(device, result)
    for key in contexts:
        table.contexts[key] = _faster(table.contexts.get(key), measured[key], "ms")
    for spec in specs:
        table.entries[spec.key] = _faster(table.entries.get(spec.key), _entry(spec, measured[spec.key]), "measured_ms")
    for entry in table.entries.values():
        if "context" in entry:  # a context measured faster now changes the blocks measured behind it
            # A block cheaper than the noise of the difference is kept at 1% of its measurement, never <= 0.
            context_ms = table.contexts[entry["context"]]["ms"]
            entry["ms"] = max(entry["measured_ms"] - context_ms, 0.01 * entry["measured_ms"])
    now = datetime.datetime.now(datetime.timezone.utc)
    table.calls.append({"ended": now.isoformat(timespec="milliseconds"),
                        "models": sorted([*contexts, *(spec.key for spec in specs)]),
                        "reference_ms": {spec.key: measured[REFERENCE_PREFIX + spec.key]["ms"] for spec in references}})
    table.created = now.isoformat(timespec="seconds")


def _wait_after_last_call(table: LatencyTable) -> None:
    ended = datetime.datetime.fromisoformat(table.calls[-1]["ended"])
    since = (datetime.datetime.now(datetime.timezone.utc) - ended).total_seconds()
    if since < CONFIRM_AFTER_S:
        time.sleep(CONFIRM_AFTER_S - since)


def _measure_slow_calls_again(device: Device, table: LatencyTable, cache: ModelFileCache, pool: ConversionPool,
                              references: list[BlockSpec], chunk_size: int, seed: int, partial: Path, log) -> None:
    """Measure the entries made only in slow calls again, CONFIRM_AFTER_S after the last call, up to
    REMEASURE_ROUNDS times; each keeps its fastest measurement."""
    for round_ in range(REMEASURE_ROUNDS + 1):
        slow = measured_only_in_slow_calls(table)
        if not slow:
            if round_:
                log(f"measured again: every entry now has a call within {SLOW_CALL_FACTOR}x the typical state")
            return
        if round_ == REMEASURE_ROUNDS:
            log(f"{len(slow)} entries of the {device.name} table were measured only while this machine ran over "
                f"{SLOW_CALL_FACTOR}x its typical state ({REMEASURE_ROUNDS} tries, up to {max(slow.values()):.2f}x): "
                f"they may read high; `edgefr profile --device {device.name}` on a quieter machine measures them again")
            return
        log(f"{len(slow)} entries were measured only in calls where the reference blocks ran over {SLOW_CALL_FACTOR}x "
            f"their typical time (up to {max(slow.values()):.2f}x: a slow spell of the machine); measuring them again")
        specs = [BlockSpec.from_dict(table.entries[key]["block"]) for key in slow if key in table.entries]
        context_of = {entry["context"]: (entry["block"]["res"], entry["block"]["cin"])
                      for entry in table.entries.values() if "context" in entry}
        contexts = list({key: context_of[key] for key in slow if key in context_of}.items())
        _wait_after_last_call(table)  # the slow call may be the last one, and its spell not over yet
        for start in range(0, max(len(specs), len(contexts)), chunk_size):
            _measure_call(device, table, cache, pool, specs[start:start + chunk_size],
                          dict(contexts[start:start + chunk_size]), references, seed + len(table.calls),
                          "measure again")
            table.save(partial)


def profile_device(device: Device, space: SearchSpace, out: Path, blocks: list[BlockSpec] | None = None,
                   calibration_nets: int = DEFAULT_CALIBRATION_NETS, embedding: int = 128, seed: int = 0,
                   chunk_size: int = 64, fresh: bool = False, extend: bool = True,
                   conversion_workers: int | None = None, log=print) -> LatencyTable:
    """Measure `blocks` (default: all of `space`) on `device` into `out`, resuming `out`'s partial file, and
    extending `out` itself unless `extend` is off (a caller that found it of another machine) or `fresh`.
    Files are converted by `conversion_workers` processes (default: one per core): a chunk's files on all of them,
    and while it is measured the next chunk's (after the last, the calibration nets') beside it
    (`lanes_beside_measurement`)."""
    by_key = {spec.key: spec for spec in (blocks if blocks is not None else space.all_block_specs())}
    specs = list(by_key.values())  # a block listed twice is measured once
    partial = out.with_name(out.stem + ".partial.json")
    table = _resume_or_new(device, space, out, partial, fresh, extend, log)
    todo = [s for s in specs if s.key not in table.entries]
    if len(todo) < len(specs):
        log(f"resuming: {len(specs) - len(todo)} of {len(specs)} blocks already measured in {table.path}")
    cache = ModelFileCache(device.runtime, device.dtype)
    rng = random.Random(seed)
    rng.shuffle(todo)  # randomized order across chunks too: no block family measured all at once
    references = [by_key[key] for key in seeded_sample(by_key, REFERENCE_BLOCKS, seed)]
    chunks = [todo[start:start + chunk_size] for start in range(0, len(todo), chunk_size)]
    # What each call converts ahead while it measures: the next chunk, and after the last the calibration nets.
    upcoming = [_block_requests(chunk, _contexts_of(chunk)) for chunk in chunks[1:]]
    upcoming.append({arch.name: ("network", arch) for arch in
                     covered_calibration_archs(space, calibration_nets, embedding, {*by_key, *table.entries})})
    with ConversionPool(conversion_workers) as pool:
        lanes = lanes_beside_measurement(device, pool)
        with tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"profile {device.name}",
                  unit="block") as bar:
            for index, chunk in enumerate(chunks):
                contexts = {key: shape for key, shape in _contexts_of(chunk).items() if key not in table.contexts}
                _measure_call(device, table, cache, pool, chunk, contexts, references, seed + index * chunk_size,
                              "measure", bar.set_postfix_str,
                              functools.partial(pool.convert_ahead, cache, upcoming[index], lanes))
                table.save(partial)
                bar.update(len(chunk))
        _measure_slow_calls_again(device, table, cache, pool, references, chunk_size, seed, partial, log)
        table.calibration = calibrate(device, space, table, cache, calibration_nets, embedding, seed, log, pool)
    table.save(out)
    partial.unlink(missing_ok=True)
    return table


def calibrate(device: Device, space: SearchSpace, table: LatencyTable, cache: ModelFileCache, count: int,
              embedding: int, seed: int, log=print, pool: ConversionPool | None = None) -> dict | None:
    """Measure whole nets whose blocks are all in the table and fit the block-sum calibration."""
    from edgefr.latency.predictor import LatencyPredictor

    if count <= 0:
        return None
    archs = covered_calibration_archs(space, count, embedding, set(table.entries))
    if len(archs) < MIN_CALIBRATION_NETS:
        log(f"calibration skipped: only {len(archs)} calibration nets are covered by the profiled blocks "
            f"(need {MIN_CALIBRATION_NETS}); predictions are raw block sums")
        return None
    anchors = anchor_blocks(table, archs, ANCHOR_BLOCKS, seed)
    requests = {a.name: ("network", a) for a in archs}
    requests.update({ANCHOR_PREFIX + spec.key: ("block", spec) for spec in anchors})
    with tqdm(total=len(requests), desc="convert calibration nets", unit="file", leave=False) as bar:
        files = cache.files(requests, pool, lambda key: bar.update())
    result = measure_files(device, files, seed + 1, "measure calibration nets")
    state = machine_state(table, {spec.key: result["results"][ANCHOR_PREFIX + spec.key]["ms"] for spec in anchors})
    uncalibrated = LatencyPredictor(LatencyTable(device=table.device, space=table.space, protocol=table.protocol,
                                                 entries=table.entries))
    nets = []
    for arch in archs:
        raw_by_act: dict[str, float] = {}
        for block in uncalibrated.predict(arch).blocks:
            raw_by_act[block.spec.act] = raw_by_act.get(block.spec.act, 0.0) + block.raw_ms
        measured = result["results"][arch.name]["ms"]
        nets.append({"name": arch.name, "arch": arch.to_dict(), "raw_by_act": raw_by_act,
                     "measured_now_ms": measured, "measured_ms": measured / state["factor"]})
    log(f"machine state: the table's blocks ran {state['factor']:.3f}x their table time now (median of "
        f"{state['anchors']} blocks); whole-net times are divided by it before the fit")
    calibration = {**fit_calibration(nets), "machine_state": state}
    log(f"calibration on {len(nets)} whole nets: scale {calibration['scale']}, offset "
        f"{calibration['offset_ms']:.3f} ms, fit MAPE {100 * calibration['fit']['mape']:.2f}%")
    return calibration
