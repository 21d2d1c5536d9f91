"""Device descriptions and the CLI's handling of bad device input."""

import pytest

from edgefr.devices import list_devices, resolve_device
from edgefr.errors import EdgefrError
from tests.support import assert_one_line_error, run_edgefr


def test_shipped_devices_load_and_cover_this_host_and_templates():
    devices = {d.name: d for d in list_devices()}
    for name in ("host-ort", "host-tflite", "host-tflite-int8"):
        assert devices[name].transport == "local" and devices[name].threads == 1
        assert devices[name].metric == "thread_cpu"
    assert {d.transport for d in devices.values()} >= {"local", "ssh", "adb"}


def test_ad_hoc_targets():
    ssh = resolve_device("ssh://pi@192.168.1.20:2222", runtime="tflite", dtype="int8")
    assert (ssh.transport, ssh.host, ssh.port, ssh.runtime, ssh.dtype, ssh.metric) == (
        "ssh", "pi@192.168.1.20", 2222, "tflite", "int8", "wall")
    adb = resolve_device("adb:R58M123ABC")
    assert (adb.transport, adb.serial, adb.runtime) == ("adb", "R58M123ABC", "tflite")
    with pytest.raises(EdgefrError, match="needs --runtime"):
        resolve_device("ssh://pi@host")


@pytest.mark.parametrize("body, message", [
    ('runtime = "tensorrt"', "runtime='tensorrt' is not supported"),
    ('runtime = "onnxruntime"\nthreads = 2\nmetric = "thread_cpu"', "needs threads = 1"),
    ('runtime = "onnxruntime"\nspeed = 3', "unknown keys ['speed']"),
    ('runtime = "onnxruntime"\n[protocol]\nwarmup = 1', "unknown [protocol] keys"),
    ('runtime = ', "not valid TOML"),
    ('runtime = "onnxruntime"\n[protocol]\nstatistic = "mean"', 'statistic must be "min" or "median"'),
])
def test_bad_device_files_name_the_file_and_the_problem(tmp_path, body, message):
    path = tmp_path / "board.toml"
    path.write_text(body)
    with pytest.raises(EdgefrError) as info:
        resolve_device(str(path))
    assert str(path) in str(info.value) and message in str(info.value)


def test_cli_unknown_device_is_a_one_line_error():
    result = run_edgefr("profile", "--device", "no-such-board")
    assert_one_line_error(result, "--device 'no-such-board': unknown device", "host-ort")


def test_cli_devices_lists_the_device_files():
    result = run_edgefr("devices")
    assert result.returncode == 0
    for name in ("host-ort", "host-tflite-int8", "rpi4-tflite-int8", "android-tflite-int8"):
        assert name in result.stdout
