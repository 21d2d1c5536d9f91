"""Latency tables: real small profiles on ONNX Runtime and TFLite, prediction, calibration, and bad tables."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from edgefr.devices import resolve_device
from edgefr.errors import EdgefrError
from edgefr.latency import ArchProbabilities, ExpectedLatency, LatencyPredictor, load_device_table, load_table
from edgefr.latency.calibration import fit_calibration
from edgefr.latency.lut import LatencyTable, table_path
from edgefr.latency.models import ConversionPool, ModelFileCache
from edgefr.latency.profile import calibrate, profile_device, speed_against_table
from edgefr.space import MFN_SPACE, resolve_arch
from tests.support import assert_one_line_error, run_edgefr, table_at_speed

FAST_PROTOCOL = '[protocol]\nwarmup_s = 0.01\ntrial_s = 0.005\ntrials = 3\npasses = 2\nmax_extra_passes = 1\n'
SMALL_ARCH = "mobilefacenet_w050_d050_relu"


def write_device(tmp_path, name, runtime, dtype="fp32"):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'runtime = "{runtime}"\ndtype = "{dtype}"\nthreads = 1\nmetric = "thread_cpu"\n' + FAST_PROTOCOL)
    return path


@pytest.fixture(scope="module")
def small_ort_table(tmp_path_factory):
    """A real profile of every block of one small arch on this host's ONNX Runtime."""
    tmp = tmp_path_factory.mktemp("ort")
    device = resolve_device(str(write_device(tmp, "tiny-ort", "onnxruntime")))
    table = profile_device(device, MFN_SPACE, tmp / "tiny-ort.json", blocks=resolve_arch(SMALL_ARCH).block_specs(),
                           calibration_nets=0, log=lambda *_: None)
    return device, table


@pytest.mark.slow
def test_small_profile_on_onnxruntime_is_measured_and_predicts_the_whole_net(small_ort_table):
    device, table = small_ort_table
    reloaded = load_table(table.path)
    assert reloaded.device["runtime_version"] and reloaded.device["cpu"] and reloaded.device["name"] == "tiny-ort"
    specs = resolve_arch(SMALL_ARCH).block_specs()
    assert not reloaded.missing(specs)
    for spec in specs:
        entry = reloaded.entries[spec.key]
        assert 0 < entry["ms"] <= entry["measured_ms"] and len(entry["passes"]) >= 2
    # Bigger blocks cost more: a 56x56 stride-2 bottleneck against a 7x7 one of the same expansion.
    by_res = {s.res: reloaded.ms(s) for s in specs if s.kind == "ir" and s.stride == 2}
    assert by_res[56] > by_res[14]
    prediction = LatencyPredictor(reloaded).predict(resolve_arch(SMALL_ARCH))
    assert not prediction.calibrated and prediction.total_ms == pytest.approx(prediction.raw_sum_ms)


@pytest.mark.slow
def test_small_profile_on_tflite_int8_runs_for_real(tmp_path):
    device = resolve_device(str(write_device(tmp_path, "tiny-tfl", "tflite", "int8")))
    blocks = resolve_arch(SMALL_ARCH).block_specs()[:3]
    table = profile_device(device, MFN_SPACE, tmp_path / "t.json", blocks=blocks, calibration_nets=0,
                           log=lambda *_: None)
    assert set(table.entries) == {b.key for b in blocks}
    assert table.device["runtime"] == "tflite" and "ai-edge-litert" in table.device["runtime_version"]
    assert all(e["ms"] > 0 for e in table.entries.values())


@pytest.mark.slow
def test_profile_resumes_from_its_partial_file(tmp_path):
    device = resolve_device(str(write_device(tmp_path, "resume-ort", "onnxruntime")))
    blocks = resolve_arch(SMALL_ARCH).block_specs()[:4]
    out = tmp_path / "resume-ort.json"
    first = profile_device(device, MFN_SPACE, out, blocks=blocks[:2], calibration_nets=0, log=lambda *_: None)
    out.rename(tmp_path / "resume-ort.partial.json")  # as if interrupted after the first chunk
    messages = []
    second = profile_device(device, MFN_SPACE, out, blocks=blocks, calibration_nets=0, log=messages.append)
    assert any("resuming: 2 of 4" in m for m in messages)
    for key, entry in first.entries.items():
        assert second.entries[key]["passes"] == entry["passes"]  # kept, not measured again
    assert not (tmp_path / "resume-ort.partial.json").exists()


def distinct_blocks(count):
    return list({spec.key: spec for spec in resolve_arch(SMALL_ARCH).block_specs()}.values())[:count]


def fake_measurements(monkeypatch, state_of_call):
    """Replace the agent call of `profile` by a host whose models take fixed times (by id), times the machine
    state `state_of_call(i)` of its i-th call (0-based); returns the calls' model ids and the sleeps."""
    from edgefr.latency import profile

    calls, sleeps = [], []

    def base_ms(key):
        key = key.removeprefix(profile.REFERENCE_PREFIX)
        return 0.02 if key.startswith("context:") else 0.1 + sum(map(ord, key)) % 97 / 100

    def measure(device, files, seed, label, progress_bar=True):
        state = state_of_call(len(calls))
        calls.append(sorted(files))
        results = {key: {"ms": state * base_ms(key), "passes": [state * base_ms(key)] * 2, "spread": 0.0}
                   for key in files}
        return {"results": results, "runtime_version": "onnxruntime fake", "cpu": "fake", "platform": ""}

    monkeypatch.setattr(profile, "measure_files", measure)
    monkeypatch.setattr(profile.time, "sleep", sleeps.append)
    return calls, sleeps, base_ms


def test_a_chunk_measured_in_a_slow_spell_is_measured_again_and_keeps_its_faster_time(tmp_path, monkeypatch):
    # A slow spell of a shared host can cover a whole chunk's call (README, *Devices and measurement*): here the
    # second of four chunks runs 1.25x slow. Its reference blocks show it; its blocks and context are measured
    # again after the sweep, CONFIRM_AFTER_S after the last call, and keep the faster time.
    from edgefr.latency import profile

    calls, sleeps, base_ms = fake_measurements(monkeypatch, lambda i: 1.25 if i == 1 else 1.0)
    device = resolve_device(str(write_device(tmp_path, "spell-ort", "onnxruntime")))
    blocks = distinct_blocks(8)
    messages = []
    table = profile_device(device, MFN_SPACE, tmp_path / "spell-ort.json", blocks=blocks, chunk_size=2,
                           calibration_nets=0, log=messages.append)
    assert len(calls) == 5 and len(table.calls) == 5
    slow_call = table.calls[1]["models"]
    assert table.calls[4]["models"] == slow_call  # the spell's chunk, and only it, measured again
    assert profile.call_states(table.calls)[1] == pytest.approx(1.25)
    assert any("measured only in calls where the reference blocks ran over" in m for m in messages)
    assert any(m.startswith("measured again:") for m in messages)
    assert len(sleeps) == 1 and 0 < sleeps[0] <= profile.CONFIRM_AFTER_S
    for spec in blocks:
        entry = table.entries[spec.key]
        assert entry["measured_ms"] == pytest.approx(base_ms(spec.key)), spec.key
        first = (1.25 if spec.key in slow_call else 1.0) * base_ms(spec.key)
        assert entry["calls_ms"] == pytest.approx([first] + ([base_ms(spec.key)] if spec.key in slow_call else []))
        if "context" in entry:
            assert entry["ms"] == pytest.approx(base_ms(spec.key) - base_ms(entry["context"]))
    assert all(c["ms"] == pytest.approx(0.02) for c in table.contexts.values())
    saved = load_table(tmp_path / "spell-ort.json")
    assert saved.calls == table.calls and len(saved.calls[0]["reference_ms"]) == profile.REFERENCE_BLOCKS


def test_one_fast_call_does_not_make_the_others_look_slow(tmp_path, monkeypatch):
    # The state is read against the calls' median, not their fastest: a profile whose third chunk ran 0.8x (the
    # machine briefly quieter) measures nothing again.
    calls, sleeps, base_ms = fake_measurements(monkeypatch, lambda i: 0.8 if i == 2 else 1.0)
    device = resolve_device(str(write_device(tmp_path, "quiet-ort", "onnxruntime")))
    messages = []
    table = profile_device(device, MFN_SPACE, tmp_path / "quiet-ort.json", chunk_size=2, calibration_nets=0,
                           blocks=distinct_blocks(8), log=messages.append)
    assert len(calls) == len(table.calls) == 4 and not sleeps and not messages


def test_a_spell_that_outlasts_the_remeasurements_is_reported_not_hidden(tmp_path, monkeypatch):
    from edgefr.latency import profile

    calls, sleeps, base_ms = fake_measurements(monkeypatch, lambda i: 1.25 if i == 1 or i >= 4 else 1.0)
    device = resolve_device(str(write_device(tmp_path, "long-spell-ort", "onnxruntime")))
    blocks = distinct_blocks(8)
    messages = []
    table = profile_device(device, MFN_SPACE, tmp_path / "long-spell-ort.json", blocks=blocks, chunk_size=2,
                           calibration_nets=0, log=messages.append)
    assert len(calls) == 4 + profile.REMEASURE_ROUNDS and len(sleeps) == profile.REMEASURE_ROUNDS
    slow = [key for key in table.calls[1]["models"] if key in table.entries]
    assert slow and all(table.entries[k]["measured_ms"] == pytest.approx(1.25 * base_ms(k)) for k in slow)
    # The spell's calls now make up half of them, so the typical state moved towards them; they still stand out.
    worst = max(profile.measured_only_in_slow_calls(table).values())
    assert profile.SLOW_CALL_FACTOR < worst < 1.25
    assert messages[-1].startswith(f"{len(table.calls[1]['models'])} entries of the long-spell-ort table were "
                                   f"measured only while this machine ran over {profile.SLOW_CALL_FACTOR}x its typical "
                                   f"state ({profile.REMEASURE_ROUNDS} tries, up to {worst:.2f}x): they may read high; "
                                   "`edgefr profile --device long-spell-ort` on a quieter machine measures them again")


def test_a_conversion_pool_writes_the_files_a_single_process_writes(tmp_path):
    """Profiles convert on every core, and ahead while they measure: the files must be those of a serial
    conversion, in the requests' order, and a file is converted once (not again when cached, not twice when
    asked for while it converts ahead)."""
    arch = resolve_arch(SMALL_ARCH)
    specs = arch.block_specs()[1:4]
    requests = {spec.key: ("block", spec) for spec in specs}
    requests["context"] = ("context", specs[0].res, specs[0].cin)
    requests["net"] = ("network", arch)
    serial = ModelFileCache("onnxruntime", "fp32", root=tmp_path / "serial").files(requests)
    pooled_cache = ModelFileCache("onnxruntime", "fp32", root=tmp_path / "pooled")
    pooled_cache.block(specs[0])
    cached_mtime = pooled_cache.block(specs[0]).stat().st_mtime_ns
    done = []
    ahead_cache = ModelFileCache("onnxruntime", "fp32", root=tmp_path / "ahead")
    with ConversionPool(2) as pool:
        pooled = pooled_cache.files(requests, pool, done.append)
        # Converted ahead one at a time, then asked for (two keys of one file among them) while some still convert.
        pool.convert_ahead(ahead_cache, requests, 1)
        ahead = ahead_cache.files({**requests, "same net": requests["net"]}, pool)
        written = {key: path.stat().st_mtime_ns for key, path in ahead.items()}
    assert list(pooled) == list(requests) and sorted(done) == sorted(requests)
    for key in requests:
        assert pooled[key].read_bytes() == serial[key].read_bytes(), key
        assert ahead[key].read_bytes() == serial[key].read_bytes(), key
    assert ahead["same net"] == ahead["net"]
    # Each file was converted once: none was written again after it was handed out.
    assert {key: path.stat().st_mtime_ns for key, path in ahead.items()} == written
    assert pooled[specs[0].key].stat().st_mtime_ns == cached_mtime
    assert not list((tmp_path / "pooled").rglob("*partial*")) and not list((tmp_path / "ahead").rglob("*partial*"))


def test_conversions_beside_a_measurement_take_only_a_free_core_of_this_host():
    from dataclasses import replace

    from edgefr.latency.profile import lanes_beside_measurement

    host = resolve_device("host-ort")
    assert [lanes_beside_measurement(host, ConversionPool(cores)) for cores in (1, 2, 8)] == [0, 1, 1]
    assert lanes_beside_measurement(replace(host, threads=2), ConversionPool(2)) == 0
    board = replace(host, transport="ssh", host="pi@board")
    assert lanes_beside_measurement(board, ConversionPool(4)) == 4


def test_calibration_recovers_per_activation_scales_and_offset():
    truth = {"relu": 0.8, "prelu": 1.1}
    nets = []
    for relu_ms, prelu_ms in [(1, 0), (2, 1), (0, 3), (4, 2), (3, 3), (1, 5)]:
        nets.append({"name": f"{relu_ms}-{prelu_ms}", "raw_by_act": {"relu": relu_ms, "prelu": prelu_ms},
                     "measured_ms": truth["relu"] * relu_ms + truth["prelu"] * prelu_ms + 0.2})
    fit = fit_calibration(nets)
    assert fit["scale"]["relu"] == pytest.approx(0.8, abs=1e-6)
    assert fit["scale"]["prelu"] == pytest.approx(1.1, abs=1e-6)
    assert fit["offset_ms"] == pytest.approx(0.2, abs=1e-6) and fit["fit"]["mape"] < 1e-6


@pytest.mark.slow
def test_calibration_reads_the_machine_state_from_anchor_blocks_and_divides_it_out():
    """A table whose blocks were measured on a machine twice as fast (halved here) calibrates to the same scales:
    the anchor blocks, measured now beside the calibration nets, show the 2x, and the fit removes it."""
    device = resolve_device("host-ort")
    table = load_table(table_path("host-ort"))  # the shipped blocks; this machine's CPU may differ (CI)
    cache = ModelFileCache(device.runtime, device.dtype)
    calibrations = {}
    for label, speedup in (("as measured", 1.0), ("twice as fast", 2.0)):
        doctored = copy.deepcopy(table)
        for entry in doctored.entries.values():
            entry["ms"] /= speedup
            entry["measured_ms"] /= speedup
        calibrations[label] = calibrate(device, MFN_SPACE, doctored, cache, count=4, embedding=128, seed=0,
                                        log=lambda *_: None)
    same, fast = calibrations["as measured"], calibrations["twice as fast"]
    assert fast["machine_state"]["anchors"] >= 12
    # 2x, read within the noise of a loaded machine; the scales stay put instead of doubling.
    assert 1.5 < fast["machine_state"]["factor"] / same["machine_state"]["factor"] < 2.7, (same, fast)
    for act in ("relu", "prelu"):
        assert 0.75 < fast["scale"][act] / same["scale"][act] < 1.33, (act, same["scale"], fast["scale"])


def test_speed_check_tells_a_table_of_another_machine_from_this_ones(tables_here, tmp_path):
    """The CPU name does not tell machines apart (two "AMD EPYC" hosts here ran 3.4x apart): a sample of the
    table's blocks measured again does."""
    device = resolve_device("host-ort")
    here = load_table(tables_here / "host-ort.json")
    same = speed_against_table(device, here)
    assert not same["other_machine"], same
    faster = speed_against_table(device, table_at_speed(here, 1 / 3, tmp_path / "host-ort.json"))
    # Read against this host's own drift from its table (0.79 and 0.82 of it seen here, a shared machine): 3x.
    assert 2.4 < faster["factor"] / same["factor"] < 3.75 and faster["other_machine"], (same, faster)


def test_profile_starts_afresh_over_a_table_of_another_machine(tables_here, tmp_path):
    """`edgefr profile` extends or recalibrates a table of this machine; one measured elsewhere is replaced."""
    foreign = tmp_path / "host-ort.json"
    table_at_speed(load_table(tables_here / "host-ort.json"), 1 / 3, foreign)
    result = run_edgefr("profile", "--device", "host-ort", "--out", str(foreign), "--limit", "3",
                        "--calibration-nets", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "measured on another machine; profiling afresh" in result.stdout + result.stderr
    assert len(load_table(foreign).entries) == 3  # a new table, not the other machine's 552 blocks


def test_profile_told_not_to_extend_does_not_check_the_table_again(tables_here, tmp_path):
    """The search has already found the table of another machine; the profile it starts must not measure that
    table's blocks a second time, yet it writes a new table."""
    out = tmp_path / "host-ort.json"
    table_at_speed(load_table(tables_here / "host-ort.json"), 1 / 3, out)
    messages = []
    blocks = resolve_arch(SMALL_ARCH).block_specs()[:2]
    table = profile_device(resolve_device("host-ort"), MFN_SPACE, out, blocks=blocks, calibration_nets=0, extend=False,
                           log=messages.append)
    assert messages == [] and len(load_table(out).entries) == len(table.entries) == 2


def test_search_takes_a_shipped_table_of_a_machine_like_this_one(tables_here, tmp_path, monkeypatch):
    """Where the main table is another machine's, a shipped alternate that runs at this host's speed takes its
    place (seconds, instead of a profile: ~18 min on the AVX2 host); alternates of other machines are passed
    over."""
    from edgefr.search.cli import ensure_table

    folder = tmp_path / "tables"
    here = load_table(tables_here / "host-ort.json")
    table_at_speed(here, 1 / 3, folder / "host-ort.json")
    table_at_speed(here, 3, folder / "alternates" / "host-ort@a-slower-machine.json")
    table_at_speed(here, 1, folder / "alternates" / "host-ort@b-like-this-one.json")
    monkeypatch.setenv("EDGEFR_LATENCY_TABLES", str(folder))
    messages = []
    ensure_table("host-ort", messages.append)
    assert len(messages) == 2 and "it was measured on another machine" in messages[0], messages
    assert "host-ort@b-like-this-one.json: measured on a machine like this one" in messages[1], messages
    installed = (folder / "host-ort.json").read_bytes()
    assert installed == (folder / "alternates" / "host-ort@b-like-this-one.json").read_bytes()
    messages.clear()
    ensure_table("host-ort", messages.append)  # now this host's table: nothing to do
    assert messages == []


@pytest.mark.slow
def test_search_profiles_this_host_first_when_its_table_is_of_another_machine(tables_here, tmp_path):
    """The README's main job on a host whose shipped table was measured elsewhere: it profiles before searching,
    and the old table stays in place until the new one is complete."""
    folder = tmp_path / "tables"
    table_at_speed(load_table(tables_here / "host-ort.json"), 1 / 3, folder / "host-ort.json")
    table_at_speed(load_table(tables_here / "host-ort.json"), 3, folder / "alternates" / "host-ort@slower.json")
    before = (folder / "host-ort.json").read_bytes()
    process = subprocess.Popen([sys.executable, "-m", "edgefr.cli", "search", "--latency-ms", "4", "--no-train"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "EDGEFR_LATENCY_TABLES": str(folder)}, cwd=tmp_path)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("profiling host-ort first"):
                break
    finally:
        process.kill()
        process.wait()
    assert lines and lines[-1].startswith("profiling host-ort first"), "".join(lines)[-2000:]
    assert any("it was measured on another machine" in line for line in lines)
    assert not any("host-ort@slower.json" in line for line in lines)  # the alternate of another machine
    assert (folder / "host-ort.json").read_bytes() == before


def synthetic_full_table() -> LatencyTable:
    """A full-space table whose numbers grow with block work, to test prediction arithmetic (not latency)."""
    entries = {}
    for spec in MFN_SPACE.all_block_specs():
        work = spec.cin * spec.cout * spec.res * spec.res * spec.expansion * spec.kernel / spec.stride ** 2
        entries[spec.key] = {"ms": 1e-7 * work + (0.02 if spec.act == "prelu" else 0.01)}
    calibration = {"scale": {"relu": 0.9, "prelu": 1.2}, "offset_ms": 0.05}
    return LatencyTable(device={"name": "synthetic"}, space=MFN_SPACE.name, protocol={}, entries=entries,
                        calibration=calibration)


def test_expected_latency_equals_the_prediction_of_one_hot_archs():
    predictor = LatencyPredictor(synthetic_full_table())
    expected = ExpectedLatency(predictor, MFN_SPACE, embedding=128)
    for name in ("mobilefacenet", "mobilefacenet_relu", "mobilefacenet_w050_d050_relu", "mobilefacenet_w125"):
        arch = resolve_arch(name)
        value = expected(ArchProbabilities.one_hot(MFN_SPACE, arch))
        assert value.item() == pytest.approx(predictor.predict(arch).total_ms, rel=1e-5)


def test_expected_latency_is_differentiable_in_every_decision():
    expected = ExpectedLatency(LatencyPredictor(synthetic_full_table()), MFN_SPACE, embedding=128)
    logits = ArchProbabilities(
        stem_act=torch.zeros(2, requires_grad=True),
        widths=[torch.zeros(len(s.widths), requires_grad=True) for s in MFN_SPACE.stages],
        depths=[torch.zeros(len(s.depths), requires_grad=True) for s in MFN_SPACE.stages],
        layers=[torch.zeros(max(s.depths), len(s.candidates), requires_grad=True) for s in MFN_SPACE.stages],
        head_act=torch.zeros(2, requires_grad=True))
    probs = ArchProbabilities(stem_act=logits.stem_act.softmax(-1), widths=[w.softmax(-1) for w in logits.widths],
                              depths=[d.softmax(-1) for d in logits.depths],
                              layers=[layer.softmax(-1) for layer in logits.layers],
                              head_act=logits.head_act.softmax(-1))
    expected(probs).backward()
    for tensor in [logits.stem_act, logits.head_act, *logits.widths, *logits.depths, *logits.layers]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    # Wider is slower: the gradient pushes probability away from the widest option of the widest stage.
    assert logits.widths[2].grad[-1] > logits.widths[2].grad[0]


def test_missing_blocks_are_an_error_not_a_zero():
    table = synthetic_full_table()
    arch = resolve_arch("mobilefacenet")
    del table.entries[arch.block_specs()[3].key]
    with pytest.raises(EdgefrError, match="lacks 1 block"):
        LatencyPredictor(table).predict(arch)


def test_corrupt_truncated_or_foreign_tables_are_clear_errors(tmp_path):
    good = synthetic_full_table()
    good.device = {"name": "host-ort", "runtime": "onnxruntime", "dtype": "fp32", "threads": 1,
                   "metric": "thread_cpu", "transport": "local", "runtime_version": "0.0.1", "cpu": "other"}
    path = good.save(tmp_path / "host-ort.json")
    text = path.read_text()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(EdgefrError, match="truncated.json: corrupt or truncated latency table"):
        load_table(truncated)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"schema": "something/2"}))
    with pytest.raises(EdgefrError, match="not a latency table"):
        load_table(foreign)
    with pytest.raises(EdgefrError, match="measured with onnxruntime 0.0.1|measured with 0.0.1"):
        load_device_table(resolve_device("host-ort"), path)
    with pytest.raises(EdgefrError, match="measured with name='host-ort', but device 'host-tflite'"):
        load_device_table(resolve_device("host-tflite"), path)


def test_cli_latency_with_a_truncated_table_is_a_one_line_error(tmp_path):
    bad = tmp_path / "host-ort.json"
    bad.write_text('{"schema": "edgefr.lut/1", "entries": {"stem')
    assert_one_line_error(run_edgefr("latency", "--arch", "mobilefacenet", "--device", "host-ort", "--table", str(bad)),
                          "host-ort.json", "corrupt or truncated latency table")


@pytest.mark.slow
def test_cli_latency_measure_prints_breakdown_prediction_and_error(small_ort_table, tmp_path):
    device, table = small_ort_table
    result = run_edgefr("latency", "--arch", SMALL_ARCH, "--device", device.source, "--table", str(table.path),
                        "--measure")
    assert result.returncode == 0, result.stderr
    assert "stem:r112:c3-32" in result.stdout and "head:r7" in result.stdout
    predicted = float(result.stdout.split("predicted:")[1].split()[0])
    measured = float(result.stdout.split("measured:")[1].split()[0])
    assert predicted == pytest.approx(table_total(table), abs=5.1e-4)  # printed with 3 decimals
    # In-context block entries already sum close to the whole net, even uncalibrated, on a loaded CI machine.
    assert 0.5 < predicted / measured < 1.6


def table_total(table):
    return sum(table.entries[s.key]["ms"] for s in resolve_arch(SMALL_ARCH).block_specs())


def test_profile_help_states_the_calibration_default():
    from edgefr.latency.profile import DEFAULT_CALIBRATION_NETS

    result = run_edgefr("profile", "--help")
    assert result.returncode == 0 and f"[default: {DEFAULT_CALIBRATION_NETS}]" in " ".join(result.stdout.split())
