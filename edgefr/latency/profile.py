"""`edgefr profile`: measure every block of the search space on a device and write its latency table.

Long on purpose (minutes per device), so it checkpoints: blocks are converted and measured in chunks, and each
measured chunk is saved to `<table>.partial.json`; a rerun resumes from it. Whole nets measured at the end fit the
calibration (see `calibration.py`), together with a sample of the table's own blocks measured again ("anchors"):
a shared machine's speed drifts by several percent within minutes (on this host the same 30 nets, measured 3 to
30 minutes apart, moved by up to 7%), so the calibration nets' times are first brought back to the machine state
the blocks were measured in. The scales then hold what whole graphs do differently from their blocks, not the
moment the calibration ran.
"""

from __future__ import annotations

import datetime
import random
import statistics
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


def measure_networks(device: Device, archs: dict[str, Arch], label: str) -> dict[str, float]:
    """Several whole nets in one agent call (one upload, interleaved passes): id -> ms."""
    cache = ModelFileCache(device.runtime, device.dtype)
    results = measure_files(device, {key: cache.network(arch) for key, arch in archs.items()}, 0, label)["results"]
    return {key: results[key]["ms"] for key in archs}


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


def _entry(spec: BlockSpec, measured: dict, contexts: dict[str, dict]) -> dict:
    entry = {**measured, "measured_ms": measured["ms"], "block": spec.as_dict()}
    if spec.kind != "stem":
        ctx = context_key(spec.res, spec.cin)
        # A block cheaper than the noise of the difference is kept at 1% of its measurement, never <= 0.
        entry.update(ms=max(measured["ms"] - contexts[ctx]["ms"], 0.01 * measured["ms"]), context=ctx)
    return entry


def anchor_blocks(table: LatencyTable, archs: list[Arch], count: int, seed: int) -> list[BlockSpec]:
    """A seeded sample of the blocks the calibration nets are made of (those the calibration must agree with)."""
    specs = {spec.key: spec for arch in archs for spec in arch.block_specs() if spec.key in table.entries}
    keys = sorted(specs)
    random.Random(seed).shuffle(keys)
    return [specs[key] for key in keys[:count]]


def machine_state(table: LatencyTable, measured_now: dict[str, float]) -> dict:
    """How fast the machine runs now against when the table's blocks were measured: the median ratio of the
    blocks' times now (`measured_now`, at least one) to their table times."""
    ratios = sorted(ms / table.entries[key]["measured_ms"] for key, ms in measured_now.items())
    return {"factor": statistics.median(ratios), "anchors": len(ratios),
            "ratio_range": [ratios[0], ratios[-1]]}


def speed_against_table(device: Device, table: LatencyTable, seed: int = 0) -> dict:
    """`machine_state` of the device now against `table`: a seeded sample of its blocks converted (cached) and
    measured again; plus `other_machine`, whether they ran more than OTHER_MACHINE_FACTOR off their table times."""
    keys = sorted(table.entries)
    random.Random(seed).shuffle(keys)
    specs = [BlockSpec.from_dict(table.entries[key]["block"]) for key in keys[:SPEED_CHECK_BLOCKS]]
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


def profile_device(device: Device, space: SearchSpace, out: Path, blocks: list[BlockSpec] | None = None,
                   calibration_nets: int = DEFAULT_CALIBRATION_NETS, embedding: int = 128, seed: int = 0,
                   chunk_size: int = 64, fresh: bool = False, extend: bool = True,
                   conversion_workers: int | None = None, log=print) -> LatencyTable:
    """Measure `blocks` (default: all of `space`) on `device` into `out`, resuming `out`'s partial file, and
    extending `out` itself unless `extend` is off (a caller that found it of another machine) or `fresh`.
    Files are converted by `conversion_workers` processes (default: one per core)."""
    specs = blocks if blocks is not None else space.all_block_specs()
    partial = out.with_name(out.stem + ".partial.json")
    table = _resume_or_new(device, space, out, partial, fresh, extend, log)
    todo = [s for s in specs if s.key not in table.entries]
    if len(todo) < len(specs):
        log(f"resuming: {len(specs) - len(todo)} of {len(specs)} blocks already measured in {table.path}")
    cache = ModelFileCache(device.runtime, device.dtype)
    rng = random.Random(seed)
    rng.shuffle(todo)  # randomized order across chunks too: no block family measured all at once
    with ConversionPool(conversion_workers) as pool:
        with tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"profile {device.name}",
                  unit="block") as bar:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                requests = {}
                for spec in chunk:
                    requests[spec.key] = ("block", spec)
                    ctx = context_key(spec.res, spec.cin)
                    if spec.kind != "stem" and ctx not in table.contexts:
                        requests[ctx] = ("context", spec.res, spec.cin)
                files = cache.files(requests, pool, lambda key: bar.set_postfix_str(f"converted {key}"))
                bar.set_postfix_str("measure")
                result = measure_files(device, files, seed + start, "measure")
                table.device = _device_record(device, result)
                table.contexts.update({k: v for k, v in result["results"].items() if k.startswith("context:")})
                for spec in chunk:
                    table.entries[spec.key] = _entry(spec, result["results"][spec.key], table.contexts)
                table.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                table.save(partial)
                bar.update(len(chunk))
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
    archs = [a for a in calibration_archs(space, count, embedding) if not table.missing(a.block_specs())]
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
