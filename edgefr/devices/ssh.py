"""The ssh transport: run the measurement agent on a board through the system's `ssh` and `scp`.

One measure makes three connections:
1. `mkdir -p WORKDIR && ls -1 WORKDIR`: create the work directory and list what is already there;
2. one `scp` of the files the board lacks: the agent (`edgefr/devices/agent.py`), the job JSON and the models, each
   named by its content hash, so a file goes over the network once however often it is profiled; each is sent as
   NAME.part and renamed in step 3, so an interrupted upload is never taken for a complete file;
3. `cd WORKDIR && mv NAME.part NAME ... && exec PYTHON agent-HASH.py job-HASH.json`: the agent streams
   `progress DONE TOTAL` lines on stderr and prints its result document (runtime_version and cpu included) on stdout.

ssh runs with BatchMode (a password prompt would hang the job), the device's ConnectTimeout,
StrictHostKeyChecking=accept-new (the first contact records the host key, a changed key fails), ServerAlive probes
(a board that drops off the network ends the job) and an overall timeout that grows with the number of models.
Every expected failure is a one-line EdgefrError that names the device and the host:port and says what to do.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path

from edgefr.devices import agent
from edgefr.devices.spec import Device
from edgefr.devices.transports import ProgressFn, agent_job, content_addressed_name, rename_uploads
from edgefr.errors import EdgefrError

AGENT_SOURCE = Path(agent.__file__)
# A quick remote command (mkdir, ls) once connected.
QUICK_COMMAND_S = 30
# The slowest link an upload is allowed to be, in bytes per second, before it counts as hung.
MIN_UPLOAD_BYTES_PER_S = 100_000
# Python start-up and the runtime's import on a board (importing onnxruntime takes seconds on a Raspberry Pi).
AGENT_STARTUP_S = 60
# One model in one pass, on top of the protocol's own warmup and trial time: creating the session and runs that
# are much longer than a trial (a whole network takes about 0.5 s per run on a Raspberry Pi 4).
MODEL_PASS_ALLOWANCE_S = 60
# ssh's own exit status for a connection-level failure (scp's as well); anything else is the remote command's.
SSH_FAILED = 255
# The shell's status for a command it cannot find or run: here the device's `python`.
COMMAND_NOT_FOUND = 127

_PROGRESS_LINE = re.compile(r"progress (\d+) (\d+)")
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")
# Python module the agent imports -> the pip package that provides it on a board.
PIP_PACKAGE = {"onnxruntime": "onnxruntime", "ai_edge_litert": "ai-edge-litert", "tflite_runtime": "ai-edge-litert",
               "numpy": "numpy"}
_UNREACHABLE = ("Connection refused", "timed out", "No route to host", "Could not resolve hostname",
                "Network is unreachable", "not responding", "Connection reset", "Connection closed",
                "kex_exchange_identification")


def ssh_options(device: Device) -> list[str]:
    """Options that ssh and scp share (they spell the port differently: -p / -P).

    The device's own `ssh_options` come first because ssh keeps the first value it reads for each option.
    """
    options = []
    for option in device.ssh_options:
        if option.startswith("-"):
            raise EdgefrError(f"device {device.name}: ssh_options entries are `-o` values such as "
                              f"\"ServerAliveInterval=30\", got {option!r}")
        options += ["-o", option]
    options += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={device.connect_timeout_s}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4"]
    if device.identity_file:
        options += ["-i", str(Path(device.identity_file).expanduser())]
    return options


def ssh_command(device: Device, remote_command: str) -> list[str]:
    return ["ssh", *ssh_options(device), "-p", str(device.port), device.host, remote_command]


def scp_command(device: Device, files: list[Path], remote_dir: str) -> list[str]:
    return ["scp", "-q", *ssh_options(device), "-P", str(device.port), *map(str, files), f"{device.host}:{remote_dir}/"]


def agent_timeout_s(device: Device, model_count: int) -> float:
    """Longest a job may run: start-up, then every model in every pass the protocol may make, each with an
    allowance on top of the protocol's own timing."""
    protocol = device.protocol
    passes = protocol["passes"] + protocol["max_extra_passes"]
    per_model_pass = MODEL_PASS_ALLOWANCE_S + protocol["warmup_s"] + protocol["trials"] * protocol["trial_s"]
    return device.connect_timeout_s + AGENT_STARTUP_S + model_count * passes * per_model_pass


class SshTransport:
    def __init__(self, device: Device):
        self.device = device
        self.address = f"{device.host.rpartition('@')[2]}:{device.port}"
        # ssh commands and scp both resolve a relative path against the login directory, which is what `~/` means;
        # quoted in a remote command, a literal `~` would not be expanded.
        self.workdir = device.workdir[2:] if device.workdir.startswith("~/") else device.workdir
        self.last_uploaded: list[str] = []  # remote names the latest measure sent (the others were already there)
        ssh_options(device)  # reject malformed ssh_options before any connection

    def measure(self, models: dict[str, Path], seed: int = 0, progress: ProgressFn | None = None) -> dict:
        with tempfile.TemporaryDirectory(prefix="edgefr-ssh-") as tmp:
            staging = Path(tmp)
            agent_name = content_addressed_name(AGENT_SOURCE, "agent-")
            sources = {agent_name: AGENT_SOURCE}
            remote_models = {}
            for model_id, path in models.items():
                path = Path(path)
                if not path.is_file():
                    raise EdgefrError(f"device {self.device.name}: model file {path} for {model_id!r} does not exist")
                remote_models[model_id] = content_addressed_name(path)
                sources[remote_models[model_id]] = path
            # Model paths in the job are relative: the agent runs in the work directory.
            job_file = staging / "job.json"
            job_file.write_text(json.dumps(agent_job(self.device, remote_models, seed), sort_keys=True))
            job_name = content_addressed_name(job_file, "job-")
            sources[job_name] = job_file

            present = self._list_workdir()
            self.last_uploaded = sorted(name for name in sources if name not in present)
            self._upload({name: sources[name] for name in self.last_uploaded}, staging / "upload")
        command = " && ".join([f"cd {shlex.quote(self.workdir)}", *rename_uploads(self.last_uploaded),
                               f"exec {self.device.python} {shlex.quote(agent_name)} {shlex.quote(job_name)}"])
        stdout = self._run_agent(command, agent_timeout_s(self.device, len(models)), progress)
        return self._parse_reply(stdout)

    def _call(self, argv: list[str], timeout: float, step: str) -> str:
        """Run ssh or scp to completion; its stdout, or a one-line EdgefrError."""
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                    timeout=timeout)
        except FileNotFoundError:
            raise self._no_client(argv[0]) from None
        except subprocess.TimeoutExpired:
            raise EdgefrError(f"device {self.device.name}: {step} on {self.address} did not finish within "
                              f"{timeout:.0f}s; check the board and its network link") from None
        if result.returncode != 0:
            raise self._failure(step, result.returncode, result.stderr)
        return result.stdout

    def _list_workdir(self) -> set[str]:
        workdir = shlex.quote(self.workdir)
        listing = self._call(ssh_command(self.device, f"mkdir -p {workdir} && ls -1 {workdir}"),
                             self.device.connect_timeout_s + QUICK_COMMAND_S, f"creating {self.workdir}")
        return set(listing.split())

    def _upload(self, sources: dict[str, Path], staging: Path) -> None:
        if not sources:
            return
        # scp cannot rename while copying several files, so links in a staging directory carry the remote names.
        staging.mkdir()
        for name, source in sources.items():
            (staging / f"{name}.part").symlink_to(source.resolve())
        size = sum(source.stat().st_size for source in sources.values())
        self._call(scp_command(self.device, sorted(staging.iterdir()), self.workdir),
                   self.device.connect_timeout_s + QUICK_COMMAND_S + size / MIN_UPLOAD_BYTES_PER_S,
                   f"uploading {len(sources)} files to {self.workdir}")

    def _run_agent(self, command: str, timeout: float, progress: ProgressFn | None) -> str:
        """Run the agent, turning its progress lines into `progress` calls; its stdout."""
        try:
            process = subprocess.Popen(ssh_command(self.device, command), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        except FileNotFoundError:
            raise self._no_client("ssh") from None
        # stdout is drained on a thread so that a large result cannot fill the pipe while stderr is being read.
        stdout_parts: list[str] = []
        reader = threading.Thread(target=lambda: stdout_parts.append(process.stdout.read()), daemon=True)
        reader.start()
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        watchdog = threading.Timer(timeout, expire)
        watchdog.start()
        stderr_tail: deque[str] = deque(maxlen=40)
        try:
            for line in process.stderr:
                match = _PROGRESS_LINE.fullmatch(line.strip())
                if match is None:
                    stderr_tail.append(line)
                elif progress:
                    progress(int(match[1]), int(match[2]))
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:  # `progress` raised (e.g. Ctrl-C): do not leave ssh running
                process.kill()
                process.wait()
        reader.join()
        if expired.is_set():
            raise EdgefrError(f"device {self.device.name}: the agent on {self.address} did not finish within "
                              f"{timeout:.0f}s; the board may be hung or overloaded, try fewer models at a time")
        if returncode != 0:
            raise self._failure("running the agent", returncode, "".join(stderr_tail))
        return "".join(stdout_parts)

    def _parse_reply(self, stdout: str) -> dict:
        # The document is the agent's last line; anything a login script prints before it is ignored.
        lines = stdout.strip().splitlines()
        try:
            document = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            document = None
        if not isinstance(document, dict) or "results" not in document:
            raise EdgefrError(f"device {self.device.name}: the agent on {self.address} replied with something that "
                              f"is not its JSON result ({stdout.strip()[:80]!r}); check that the board's login shell "
                              "prints nothing on stdout and that `python` runs the agent")
        return document

    def _no_client(self, program: str) -> EdgefrError:
        return EdgefrError(f"device {self.device.name}: no `{program}` on this machine; install the OpenSSH client "
                           "(apt-get install openssh-client)")

    def _failure(self, step: str, returncode: int, stderr: str) -> EdgefrError:
        """The one-line error for a failed ssh/scp call, from its exit status and stderr."""
        name, device = self.device.name, self.device
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {returncode}"
        if returncode == SSH_FAILED:
            if "Permission denied" in stderr:
                key = device.identity_file or "your default key"
                return EdgefrError(f"device {name}: {self.address} refused ssh authentication as {device.host} with "
                                   f"{key} ({last}); set identity_file in the device file or install the public key "
                                   f"on the board (ssh-copy-id -p {device.port} {device.host})")
            if "Host key verification failed" in stderr or "IDENTIFICATION HAS CHANGED" in stderr:
                return EdgefrError(f"device {name}: the host key of {self.address} is not the one recorded in "
                                   f"known_hosts ({last}); if the board was reinstalled, remove the old key with "
                                   f"ssh-keygen -R '[{self.address.rpartition(':')[0]}]:{device.port}'")
            if any(marker in stderr for marker in _UNREACHABLE):
                return EdgefrError(f"device {name}: cannot reach {self.address} over ssh (connect timeout "
                                   f"{device.connect_timeout_s}s): {last}; check that the board is on, that host and "
                                   "port in the device file are right and that sshd runs there")
            return EdgefrError(f"device {name}: ssh to {self.address} failed while {step}: {last}")
        if returncode == COMMAND_NOT_FOUND:
            return EdgefrError(f"device {name}: python = {device.python!r} is not found on {self.address} ({last}); "
                               "install python3 (with numpy) there or set `python` in the device file to its path")
        missing = _MISSING_MODULE.search(stderr)
        if missing:
            module = missing[1].split(".")[0]
            package = PIP_PACKAGE.get(module, module)
            return EdgefrError(f"device {name}: the {device.runtime} agent on {self.address} cannot import "
                               f"{module!r}; install it on the board: {device.python} -m pip install {package}")
        return EdgefrError(f"device {name}: {step} on {self.address} failed: {last}")
