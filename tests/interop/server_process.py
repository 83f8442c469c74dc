"""The repository's server (src/FlashMla.Server) on the CPU backend, as a child process on free loopback ports.

Ports are 0 on the command line (the server picks free ones) and read back from the start-up line the
server logs in JSON ("gRPC on port {GrpcPort}, data plane on port {DataPlanePort}, ...").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_PROJECT = REPO / "src" / "FlashMla.Server"
CLI_PROJECT = REPO / "src" / "FlashMla.Cli"

# Small enough for the 2-core CI machine, large enough for a decode that outlives a short deadline.
SERVER_OPTIONS = {
    "Layers": 2,
    "TotalBlocks": 512,
    "MaxHeads": 128,
    "MaxQueryTokens": 8,
    "MaxMessageBytes": 8 << 20,
    "SequenceLeaseSeconds": 0,
    "DrainTimeoutSeconds": 2,
}


def server_dll() -> Path:
    """``FLASHMLA_SERVER_DLL`` (CI points it at the build ``dotnet test`` just made), else a fresh Debug build."""
    explicit = os.environ.get("FLASHMLA_SERVER_DLL")
    if explicit:
        return Path(explicit)
    build = subprocess.run(["dotnet", "build", str(SERVER_PROJECT), "-c", "Debug", "-v", "q", "-nologo"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"dotnet build of the server failed:\n{build.stdout}\n{build.stderr}")
    return SERVER_PROJECT / "bin" / "Debug" / "net10.0" / "flashmla-server.dll"


def dev_certificates(directory: Path) -> Path:
    """A development CA, server certificate (localhost, 127.0.0.1) and client certificate in ``directory``, written by
    the CLI's ``dev-cert`` (a no-op build after ``dotnet test``): ca.crt, tls.crt, tls.key, client.crt, client.key."""
    build = subprocess.run(["dotnet", "build", str(CLI_PROJECT), "-c", "Debug", "-v", "q", "-nologo"], capture_output=True, text=True)
    if build.returncode != 0:
        raise RuntimeError(f"dotnet build of the CLI failed:\n{build.stdout}\n{build.stderr}")
    cli = CLI_PROJECT / "bin" / "Debug" / "net10.0" / "flashmla.dll"
    subprocess.run(["dotnet", str(cli), "dev-cert", "--out", str(directory), "--dns", "localhost", "--ip", "127.0.0.1"],
                   check=True, capture_output=True, text=True)
    return directory


class LocalServer:
    """Starts the server with ``options`` (``FlashMla`` section names and values) and stops it on ``stop``."""

    def __init__(self, options: dict[str, object], start_timeout: float = 60.0):
        settings = {"Backend": "cpu", "GrpcPort": 0, "DataPlanePort": 0, "MetricsPort": 0,
                    "ListenAddress": "loopback", "LogFormat": "json", **options}
        args = ["dotnet", str(server_dll()), *(f"--FlashMla:{k}={v}" for k, v in settings.items())]
        env = {**os.environ, "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1"}
        self.log: deque[str] = deque(maxlen=400)
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         env=env, cwd=REPO)
        self._started = threading.Event()
        self.grpc_port = self.data_plane_port = self.metrics_port = 0
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._started.wait(start_timeout) or not self.grpc_port:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.log))

    def _read_log(self) -> None:
        # Drains the output for the server's whole life (a full pipe would stall it) and keeps the tail.
        for line in self._process.stdout:
            self.log.append(line.rstrip())
            if not self._started.is_set() and '"GrpcPort"' in line:
                event = json.loads(line)
                self.grpc_port, self.data_plane_port = event["GrpcPort"], event["DataPlanePort"]
                self.metrics_port = event["MetricsPort"]
                self._started.set()
        self._started.set()

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_plane_target(self) -> str:
        return f"127.0.0.1:{self.data_plane_port}"

    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(5)
        return self._process.returncode
