"""AdbTransport without a phone: its command line and output parser, and its flow against a stand-in `adb`.

No phone or emulator is available here, so the real adb is never exercised. The stand-in `adb` (a script put first
on PATH) keeps the phone's /data/local/tmp in a temporary directory, runs `adb shell` commands with the local shell
and its `benchmark_model` prints tests/data/benchmark_model_output.txt, which is written in the real tool's format.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgefr.devices.adb import AdbTransport, benchmark_command, parse_benchmark_output
from edgefr.devices.spec import load_device_file
from edgefr.errors import EdgefrError
from edgefr.paths import devices_dir
from tests.support import write_script

FIXTURE = Path(__file__).parent / "data" / "benchmark_model_output.txt"
SERIAL = "R58M123ABC"

FAKE_ADB = """#!{python}
import shutil, subprocess, sys
PHONE_TMP = {phone_tmp!r}
args = sys.argv[1:]
if args[:2] != ["-s", {serial!r}]:
    sys.exit("error: device not found")
verb, rest = args[2], [arg.replace("/data/local/tmp", PHONE_TMP) for arg in args[3:]]
if verb == "get-state":
    print("device")
elif verb == "push":
    shutil.copyfile(rest[0], rest[1])
    print(f"{{rest[0]}}: 1 file pushed")
elif verb == "shell":
    sys.exit(subprocess.run(" ".join(rest), shell=True).returncode)
"""
FAKE_GETPROP = """#!/bin/sh
case "$1" in
  ro.product.model) echo "Pixel 7" ;;
  ro.soc.model) echo "GS201" ;;
  ro.build.version.release) echo "14" ;;
esac
"""
FAKE_BENCHMARK_MODEL = """#!/bin/sh
echo "$@" >> {calls}
cat {fixture}
"""


def android_device():
    return replace(load_device_file(devices_dir() / "android-tflite-int8.toml"), serial=SERIAL)


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """A stand-in phone: {"tmp": its /data/local/tmp, "calls": benchmark_model's argument log}."""
    phone_tmp, bin_dir = tmp_path / "phone_tmp", tmp_path / "bin"
    phone_tmp.mkdir()
    bin_dir.mkdir()
    calls = tmp_path / "benchmark_calls.txt"
    write_script(bin_dir / "adb", FAKE_ADB.format(python=sys.executable, phone_tmp=str(phone_tmp), serial=SERIAL))
    write_script(bin_dir / "getprop", FAKE_GETPROP)
    write_script(phone_tmp / "benchmark_model", FAKE_BENCHMARK_MODEL.format(calls=calls, fixture=FIXTURE))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return {"tmp": phone_tmp, "calls": calls}


def test_benchmark_command_maps_device_and_protocol_to_flags():
    assert benchmark_command(android_device(), "/data/local/tmp/edgefr/5c1f0e9a7d2b4c38.tflite") == [
        "adb", "-s", SERIAL, "shell", "/data/local/tmp/benchmark_model",
        "--graph=/data/local/tmp/edgefr/5c1f0e9a7d2b4c38.tflite", "--num_threads=4",
        "--warmup_runs=5", "--warmup_min_secs=0.05", "--num_runs=7", "--min_secs=0.14",
        "--enable_op_profiling=true"]


def test_benchmark_command_quotes_paths_for_the_phone_shell():
    command = benchmark_command(replace(android_device(), benchmark_binary="/data/local/tmp/my tools/bm"),
                                "/data/local/tmp/my models/a.tflite")
    assert command[4:6] == ["'/data/local/tmp/my tools/bm'", "--graph='/data/local/tmp/my models/a.tflite'"]


def test_parser_reads_timings_run_statistics_and_the_regular_runs_op_summary():
    report = parse_benchmark_output(FIXTURE.read_text())
    assert report.init_ms == pytest.approx(4.83)
    assert report.first_ms == pytest.approx(2.215)
    assert report.warmup_avg_ms == pytest.approx(1.21922)
    assert report.inference_avg_ms == pytest.approx(1.1965)
    assert report.regular_runs == pytest.approx({"count": 117, "first": 1.203, "curr": 1.191, "min": 1.142,
                                                 "max": 1.391, "avg": 1.1965, "std": 0.038})
    # The initialisation profile's node types (ModifyGraphWithDelegate, AllocateTensors) are not regular-run ops.
    assert list(report.ops) == ["Convolution (NHWC, QC8) IGEMM", "PRELU", "Convolution (NHWC, QC8) DWConv",
                                "Add (ND, QS8)", "Convert (NC, F32, QS8)", "Convert (NC, QS8, F32)"]
    assert report.ops["Convolution (NHWC, QC8) IGEMM"] == {"count": 2, "avg_ms": 0.512, "avg_percent": 45.511,
                                                           "cdf_percent": 45.511, "mem_kb": 0.0, "times_called": 2}
    assert report.ops["PRELU"] == {"count": 2, "avg_ms": 0.301, "avg_percent": 26.756, "cdf_percent": 72.267,
                                   "mem_kb": 0.0, "times_called": 2}
    assert report.ops["Convert (NC, QS8, F32)"]["cdf_percent"] == 100.0
    assert sum(op["avg_ms"] for op in report.ops.values()) == pytest.approx(1.125)


def test_parser_reads_older_output_without_log_prefixes():
    older = FIXTURE.read_text().replace("INFO: ", "").replace(
        "count=117 first=1203 curr=1191", "curr=1191 count=117 first=1203")
    report = parse_benchmark_output(older)
    assert report.inference_avg_ms == pytest.approx(1.1965)
    assert report.regular_runs["count"] == 117 and report.regular_runs["curr"] == pytest.approx(1.191)
    assert report.ops == parse_benchmark_output(FIXTURE.read_text()).ops


def test_parser_rejects_output_without_timings():
    with pytest.raises(EdgefrError, match="no `Inference timings in us` line"):
        parse_benchmark_output("ERROR: Could not open '/data/local/tmp/edgefr/x.tflite'.\n")


def test_measure_pushes_once_and_returns_the_agents_result_format(phone, tmp_path):
    models = {}
    for name in ("stem", "ir"):
        models[name] = tmp_path / f"{name}.tflite"
        models[name].write_bytes(name.encode() * 100)
    transport = AdbTransport(android_device())
    calls = []
    result = transport.measure(models, seed=3, progress=lambda done, total: calls.append((done, total)))

    passes = android_device().protocol["passes"]
    assert result["runtime"] == "tflite" and result["metric"] == "wall" and result["threads"] == 4
    assert result["cpu"] == "Pixel 7 (GS201)" and result["platform"] == "Android 14"
    assert result["runtime_version"].startswith("benchmark_model sha256:")
    assert set(result["results"]) == {"stem", "ir"}
    for measured in result["results"].values():
        assert measured["ms"] == pytest.approx(1.1965) and measured["passes"] == [pytest.approx(1.1965)] * passes
        assert measured["spread"] == 0 and measured["ops"]["PRELU"]["avg_ms"] == 0.301
    assert calls[-1] == (2 * passes, 2 * passes)
    # The stand-in moved /data/local/tmp, so compare the model names benchmark_model was given.
    graphs = [line.split()[0].rpartition("/")[2] for line in phone["calls"].read_text().splitlines()]
    assert sorted(graphs) == sorted(transport.last_pushed * passes)
    pushed = sorted(path.name for path in (phone["tmp"] / "edgefr").iterdir())
    assert pushed == transport.last_pushed and len(pushed) == 2

    transport.measure(models)
    assert transport.last_pushed == []


def test_missing_benchmark_binary_says_how_to_push_it(phone, tmp_path):
    (phone["tmp"] / "benchmark_model").unlink()
    model = tmp_path / "m.tflite"
    model.write_bytes(b"model")
    with pytest.raises(EdgefrError, match=rf"no benchmark_model at /data/local/tmp/benchmark_model on phone {SERIAL}"):
        AdbTransport(android_device()).measure({"m": model})


def test_phone_not_attached_is_one_line_error(phone, tmp_path):
    device = replace(android_device(), serial="NOT-ATTACHED")
    with pytest.raises(EdgefrError, match="is the phone attached with USB debugging allowed") as error:
        AdbTransport(device).measure({"m": tmp_path / "m.tflite"})
    assert "error: device not found" in str(error.value) and "\n" not in str(error.value)


def test_adb_missing_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no adb anywhere
    with pytest.raises(EdgefrError, match=r"no `adb` on this machine; install Android platform-tools"):
        AdbTransport(android_device()).measure({"m": tmp_path / "m.tflite"})
