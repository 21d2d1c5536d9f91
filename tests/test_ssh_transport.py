"""SshTransport end to end against a real OpenSSH server started on 127.0.0.1 for the test.

The server runs as the current user with throw-away host and client keys and its own sshd_config; the client side
uses its own known_hosts, so ~/.ssh is never read or written. Needs Debian's `openssh-server` (/usr/sbin/sshd): the
test skips without it on a workstation but fails under CI, where it must run.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgefr.convert import RUNTIME_SUFFIX, convert_for_runtime
from edgefr.devices.spec import Device
from edgefr.devices.ssh import SshTransport, agent_timeout_s
from edgefr.errors import EdgefrError
from edgefr.space.blocks import BlockSpec

SSHD = Path("/usr/sbin/sshd")
FAST_PROTOCOL = {"warmup_s": 0.01, "warmup_runs": 2, "trial_s": 0.005, "trials": 3, "passes": 2,
                 "agree_tolerance": 0.03, "max_extra_passes": 0}
TINY_BLOCKS = {"stem": BlockSpec(kind="stem", res=16, cin=3, cout=8, stride=2, act="relu"),
               "dw": BlockSpec(kind="dw", res=8, cin=8, cout=8, stride=1, act="relu")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A running sshd on 127.0.0.1: {"port", "client_key", "known_hosts"}."""
    if not SSHD.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SSHD} is missing; CI must install it: apt-get install -y openssh-server")
        pytest.skip(f"{SSHD} is missing (apt-get install -y openssh-server)")
    home = tmp_path_factory.mktemp("sshd")
    client_key = keygen(home / "client_key")
    (home / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    port = free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {keygen(home / 'host_key')}",
        f"PidFile {home / 'sshd.pid'}", f"AuthorizedKeysFile {home / 'authorized_keys'}", "UsePAM no",
        "StrictModes no", "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "Subsystem sftp /usr/lib/openssh/sftp-server", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory, required when run as root
    log = home / "sshd.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file)
    try:
        deadline = time.monotonic() + 10
        while True:
            if server.poll() is not None:
                pytest.fail(f"sshd exited with {server.returncode}: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 10 s: {log.read_text()}")
                time.sleep(0.1)
        yield {"port": port, "client_key": client_key, "known_hosts": home / "known_hosts"}
    finally:
        server.terminate()
        server.wait(timeout=10)


def ssh_device(sshd, runtime: str, workdir: Path, **overrides) -> Device:
    # sys.executable: the board's python here is this interpreter, which has numpy and both runtimes.
    device = Device(name=f"sshd-test-{runtime}", runtime=runtime, transport="ssh",
                    host=f"{getpass.getuser()}@127.0.0.1", port=sshd["port"], identity_file=str(sshd["client_key"]),
                    python=sys.executable, workdir=str(workdir), connect_timeout_s=5,
                    ssh_options=(f"UserKnownHostsFile={sshd['known_hosts']}", "IdentitiesOnly=yes", "LogLevel=ERROR"),
                    protocol=dict(FAST_PROTOCOL))
    return replace(device, **overrides).check()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{runtime: {block name: model file}}: two tiny real blocks converted for each runtime."""
    out = tmp_path_factory.mktemp("models")
    models: dict[str, dict[str, Path]] = {}
    for runtime, suffix in RUNTIME_SUFFIX.items():
        for name, spec in TINY_BLOCKS.items():
            example = torch.randn(*spec.input_shape())
            models.setdefault(runtime, {})[name] = convert_for_runtime(spec.build().eval(), example, runtime, "fp32",
                                                                       out / f"{name}{suffix}")
    return models


@pytest.mark.slow
@pytest.mark.parametrize("runtime", sorted(RUNTIME_SUFFIX))
def test_measures_through_real_sshd_and_reuses_uploads(sshd, tiny_models, tmp_path, runtime):
    workdir = tmp_path / "board"
    transport = SshTransport(ssh_device(sshd, runtime, workdir))
    calls = []
    result = transport.measure(tiny_models[runtime], seed=1, progress=lambda done, total: calls.append((done, total)))

    assert set(result["results"]) == set(TINY_BLOCKS)
    for measured in result["results"].values():
        assert measured["ms"] > 0 and len(measured["passes"]) == FAST_PROTOCOL["passes"]
    assert result["runtime"] == runtime and result["runtime_version"] not in ("", "unknown")
    assert result["cpu"]
    assert calls[-1] == (len(TINY_BLOCKS) * FAST_PROTOCOL["passes"],) * 2
    assert len(transport.last_uploaded) == len(TINY_BLOCKS) + 2  # agent, job, models
    uploaded = {path.name: path.stat().st_mtime_ns for path in workdir.iterdir()}
    assert not any(name.endswith(".part") for name in uploaded)

    again = transport.measure(tiny_models[runtime], seed=1)
    assert set(again["results"]) == set(TINY_BLOCKS)
    assert transport.last_uploaded == []
    assert {path.name: path.stat().st_mtime_ns for path in workdir.iterdir()} == uploaded


def test_unreachable_host_fails_fast_naming_host_and_port(tmp_path):
    port = free_port()  # nothing listens there once the probe socket is closed
    device = Device(name="closed-port", runtime="tflite", transport="ssh", host="nobody@127.0.0.1", port=port,
                    connect_timeout_s=2, ssh_options=(f"UserKnownHostsFile={tmp_path / 'known_hosts'}",)).check()
    started = time.monotonic()
    expected = rf"cannot reach 127\.0\.0\.1:{port} over ssh \(connect timeout 2s\)"
    with pytest.raises(EdgefrError, match=expected) as error:
        SshTransport(device).measure({"m": Path(__file__)})
    assert time.monotonic() - started < 10
    assert "\n" not in str(error.value)


def test_refused_key_says_so(sshd, tmp_path):
    stranger = keygen(tmp_path / "stranger_key")
    device = ssh_device(sshd, "onnxruntime", tmp_path / "board", identity_file=str(stranger))
    with pytest.raises(EdgefrError, match="refused ssh authentication"):
        SshTransport(device).measure({"m": Path(__file__)})


def test_missing_remote_python_says_so(sshd, tmp_path):
    device = ssh_device(sshd, "onnxruntime", tmp_path / "board", python="/nonexistent/python3")
    with pytest.raises(EdgefrError, match=r"python = '/nonexistent/python3' is not found on 127\.0\.0\.1"):
        SshTransport(device).measure({"m": Path(__file__)})


def test_missing_package_on_board_names_the_pip_package(sshd, tiny_models, tmp_path):
    # `-S` leaves site-packages out: the agent's first import of numpy fails as on a board without it.
    device = ssh_device(sshd, "tflite", tmp_path / "board", python=f"{sys.executable} -S")
    with pytest.raises(EdgefrError, match=r"cannot import 'numpy'; install it on the board: .* -m pip install numpy"):
        SshTransport(device).measure(tiny_models["tflite"])


def test_reply_that_is_not_json_says_so(sshd, tmp_path):
    device = ssh_device(sshd, "onnxruntime", tmp_path / "board", python="echo")
    with pytest.raises(EdgefrError, match="replied with something that is not its JSON result"):
        SshTransport(device).measure({"m": Path(__file__)})


def test_job_timeout_grows_with_the_number_of_models():
    device = Device(name="board", runtime="tflite", transport="ssh", host="pi@board").check()
    one, ten = agent_timeout_s(device, 1), agent_timeout_s(device, 10)
    assert one > 0 and ten - one == pytest.approx(9 * (agent_timeout_s(device, 2) - one))
