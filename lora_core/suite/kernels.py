"""Warm kernels: a fresh kernel for every run, without paying its imports every time.

Every notebook run gets a kernel of its own, so that no run sees another's state. A new
kernel is a new interpreter: it imports ipykernel before its first cell, torch and pandas
in it and matplotlib in its first figure, about 2.3 s of a 10 s sweep config of notebook
01 at seed scale (benchmarks/README.md), all on one core. Here a
*kernel server*, a process of this interpreter that has made those imports and runs no
other code, forks each kernel: a new process that starts ipykernel as ``python -m
ipykernel_launcher`` would, with the imports already made. The same idea as
``multiprocessing``'s forkserver, and as safe: the server holds no state of any run.

``WarmProvisioner`` is a jupyter_client kernel provisioner (registered as
``lora-core-warm`` when lora_core is installed; from a bare checkout kernels are launched
as usual). It launches the kernel through a server when

- the platform forks (Linux),
- the command is ipykernel on this interpreter, and
- ``LORA_CORE_WARM_KERNELS`` is not ``0``;

otherwise, and whenever the server fails, it launches the kernel as jupyter_client
always does. One server serves one environment: libraries read some variables when they
load (``OMP_NUM_THREADS``, glibc's ``MALLOC_*``), so a kernel asking for other values
than a server was started with gets a server of its own.

A forked kernel sees what a launched one sees: a process and session of its own, the
notebook's folder as its working directory and first on ``sys.path``, the run's
environment, and ``random``, NumPy's and torch's generators seeded afresh (a fork would
otherwise repeat the server's draws in every kernel). It exits when its server does, and
the server when its input closes, that is, when the process that started it exits; the
server then also removes the socket files of kernels whose managers died with that
process, which would otherwise stay in the temporary folder. One
difference remains: every kernel of a server shares its string-hash seed
(``PYTHONHASHSEED``), where launched kernels each draw one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import os
import random
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from importlib.metadata import entry_points
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

PROVISIONER_NAME = "lora-core-warm"
SWITCH = "LORA_CORE_WARM_KERNELS"
# What the suite's notebooks import. pyplot chooses no backend when imported; the backend
# module itself, which hooks into the running IPython when imported, is left to the kernel.
WARM_MODULES = (
    "ipykernel.kernelapp",
    "numpy",
    "pandas",
    "torch",
    "matplotlib.pyplot",
    "lora_core",
    "lora_core.suite.notebook",
    "lora_core.suite.plotting",
)
# The backend a kernel sets when the environment names none; matplotlib reads it on import.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
ANSWER_TIMEOUT = 120.0  # seconds a server may take to import, or to fork a kernel
CLOSE_TIMEOUT = 10.0  # seconds a server may take to exit once its input is closed
# Set per launch by jupyter_client and replaced in the child: not a reason for a server
# of its own.
PER_LAUNCH = ("JPY_PARENT_PID", "JPY_SESSION_NAME")


@functools.cache
def registered() -> bool:
    """Whether jupyter_client can find ``WarmProvisioner``: lora_core is installed (an
    editable install counts), not only importable from a checkout."""
    found = entry_points(group="jupyter_client.kernel_provisioners", name=PROVISIONER_NAME)
    return bool(found)


def enabled() -> bool:
    """Whether kernels are forked here: on Linux, unless LORA_CORE_WARM_KERNELS=0."""
    return hasattr(os, "fork") and sys.platform == "linux" and os.environ.get(SWITCH, "1") != "0"


# ---------------------------------------------------------------------------------------
# The client side: one server per environment, started on first use


class _Server:
    """A running kernel server: ``fork`` returns a new kernel's pid."""

    def __init__(self, env: dict[str, str]):
        self.lock = threading.Lock()
        # Its stdout answers requests; its stderr, and its kernels', is ours.
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, *WARM_MODULES],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Out of our process group, as launched kernels are: a Ctrl-C meant for a sweep
            # is not the server's to answer (it ends when we do, through its input).
            start_new_session=True,
        )
        self._expect("ready")

    def _expect(self, word: str) -> dict:
        # A server that hangs (in an import, say) must not hang the run: it is given up.
        if not select.select([self.process.stdout], [], [], ANSWER_TIMEOUT)[0]:
            self.process.kill()
            raise OSError(f"the kernel server did not answer within {ANSWER_TIMEOUT} s")
        line = self.process.stdout.readline()
        if not line:
            raise OSError(f"the kernel server exited with code {self.process.wait()}")
        answer = json.loads(line)
        if word not in answer:
            raise OSError(f"the kernel server answered {answer!r}")
        return answer

    def fork(self, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        with self.lock:
            request = json.dumps({"argv": argv, "cwd": cwd, "env": env})
            self.process.stdin.write(request.encode() + b"\n")
            self.process.stdin.flush()
            return int(self._expect("pid")["pid"])

    def close(self) -> None:
        # End of input ends the server, and so (ipykernel's parent poller) any kernel of
        # its that still runs: as a launched kernel ends when the process that started it does.
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:  # stuck on its way out: not ours to wait for
                self.process.kill()
                self.process.wait()


_servers: dict[tuple, _Server | OSError] = {}
_servers_lock = threading.Lock()


def _server_for(env: dict[str, str]) -> _Server:
    """The running server for ``env``, started if there is none; an OSError if it cannot
    start (then, for this environment, it is not tried again)."""
    env = {k: v for k, v in env.items() if k not in PER_LAUNCH}
    key = tuple(sorted(env.items()))
    with _servers_lock:
        server = _servers.get(key)
        if isinstance(server, OSError):
            raise server
        if server is None or server.process.poll() is not None:
            try:
                server = _servers[key] = _Server(env)
            except OSError as err:
                _servers[key] = err
                raise
        return server


def warm_up() -> None:
    """Start this process's kernel server for its environment now, so that its first
    kernel does not wait for the imports (a Dask worker, say, as it joins a sweep)."""
    if enabled():
        try:
            _server_for(dict(os.environ))
        except OSError:
            pass  # its kernels are launched as usual, with a warning then


@atexit.register
def close_servers() -> None:
    """Stop every kernel server this process started, and with them their kernels."""
    with _servers_lock:
        for server in _servers.values():
            if isinstance(server, _Server):
                server.close()
        _servers.clear()


class _Forked:
    """What ``LocalProvisioner`` asks of its ``subprocess.Popen``, for a forked kernel.

    The kernel is the server's child, not ours, and the server reaps it: its exit
    status is not known here, only that it has exited (reported as 0)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not alive(self.pid):
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie does not (one whose server has gone is left
    to init, which in a container may never wait for it)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (ProcessLookupError, PermissionError):  # PermissionError: the pid was reused
        return False
    except OSError:
        return True  # no /proc to tell a zombie by


def _is_this_ipykernel(cmd: list[str]) -> bool:
    return (
        len(cmd) >= 3
        and os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
        and cmd[1:3] == ["-m", "ipykernel_launcher"]
    )


class WarmProvisioner(LocalProvisioner):
    """``LocalProvisioner``, with the kernel forked from a kernel server where it can be."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if not (enabled() and _is_this_ipykernel(cmd)):
            return await super().launch_kernel(cmd, **kwargs)
        env = dict(kwargs.get("env") or os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        try:
            pid = _server_for(env).fork(cmd[3:], cwd, env)
        except (OSError, ValueError) as err:
            self.log.warning("Starting the kernel without a kernel server: %s", err)
            return await super().launch_kernel(cmd, **kwargs)
        self.process = _Forked(pid)
        self.pid = self.pgid = pid  # the kernel leads a session of its own, as launched kernels do
        self.cwd = cwd
        return self.connection_info


# ---------------------------------------------------------------------------------------
# The server side


# The socket files each kernel binds (IPC transport). A kernel's manager removes them
# when it shuts the kernel down; when the process that started the kernel is killed
# instead (a Ctrl-C'd sweep's worker, a lost Dask worker), the server does.
_running: dict[int, list[str]] = {}  # by pid, the kernels that run
_ended: list[list[str]] = []  # those of ended kernels, while any of them is left
_reaped: list[int] = []  # ended kernels not yet moved from _running to _ended


def serve(modules: list[str]) -> None:
    """Import ``modules``, then fork a kernel for every request read from stdin."""
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)
    for name in modules:
        importlib.import_module(name)
    # Kernels are waited for as they exit (so that, as a launched kernel's would, their
    # resource usage adds up in ours); each one sets this back to the default.
    signal.signal(signal.SIGCHLD, _reap)
    # Answers go out on the pipe that was stdout; stdout itself, which the kernels
    # inherit, becomes stderr, so that nothing a kernel prints can reach the pipe.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        print(json.dumps({"ready": os.getpid()}), file=answers, flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            _settle()
            sockets = _socket_files(request["argv"])
            pid = _fork()
            if pid == 0:
                answers.close()
                _become_kernel(request)  # never returns
            _running[pid] = sockets
            print(json.dumps({"pid": pid}), file=answers, flush=True)
    except BrokenPipeError:
        pass  # the client is gone: so is the reason to serve
    finally:
        _end_kernels()


def _socket_files(argv: list[str]) -> list[str]:
    """The socket files of the kernel started with ``argv`` (``-f connection_file``), if
    it uses the IPC transport: ``{ip}-{port}``, as jupyter_client names them."""
    try:
        with open(argv[argv.index("-f") + 1]) as file:
            info = json.load(file)
        if info.get("transport") != "ipc":
            return []
        ports = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
        return [f"{info['ip']}-{info[port]}" for port in ports if port in info]
    except (ValueError, IndexError, KeyError, OSError, TypeError):
        return []  # a connection file that is not ours to read: nothing to clean up


def _settle() -> None:
    """Move the kernels that have ended since the last call to ``_ended``, and forget
    those whose socket files are gone (their managers removed them)."""
    while _reaped:
        sockets = _running.pop(_reaped.pop(), None)
        if sockets:
            _ended.append(sockets)
    _ended[:] = [sockets for sockets in _ended if any(os.path.exists(path) for path in sockets)]


def _end_kernels() -> None:
    """The server is going, and its kernels with it (they would exit a moment later,
    their parent gone): end them now and remove the socket files left behind."""
    # From here on kernels are reaped only below, so that no pid in _running is freed
    # (and reused by another process) between the check that it is ours and the kill.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _settle()
    for pid in _running:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    for sockets in [*_running.values(), *_ended]:
        for path in sockets:
            try:
                os.unlink(path)
            except OSError:
                pass  # removed by the kernel's manager


def _fork() -> int:
    # The server's only threads besides its own are OpenBLAS's (NumPy starts them when it
    # loads), which OpenBLAS stops and restarts around a fork (pthread_atfork). Python
    # 3.12+ warns about forking any multi-threaded process, which would print a line for
    # every kernel. The filter is lifted again in parent and child alike as this returns.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
        )
        return os.fork()


def _reap(signum: int, frame: Any) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reaped.append(pid)  # only appended to here: the rest is done outside the handler


def _become_kernel(request: dict) -> None:
    """In the forked child: become the kernel ``python -m ipykernel_launcher`` would start."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # The server's stdin carries requests: the kernel reads nothing, as when launched.
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        server_dir = os.getcwd()
        os.chdir(request["cwd"])
        # As `python -m` started in that folder would have it: the folder first on sys.path.
        if sys.path and sys.path[0] in ("", server_dir):
            sys.path[0] = os.getcwd()
        os.environ.clear()
        os.environ.update(request["env"])
        # The kernel's parent is this server: ipykernel exits when that changes. (Its
        # default was read from the environment when the server imported it.)
        parent = str(os.getppid())
        os.environ["JPY_PARENT_PID"] = parent
        # A new interpreter seeds these from the OS; a fork would share the server's state.
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        if "torch" in sys.modules:
            sys.modules["torch"].seed()
        # Then exactly what `python -m ipykernel_launcher -f ...` runs, as __main__.
        sys.argv = ["ipykernel_launcher", *request["argv"], f"--IPKernelApp.parent_handle={parent}"]
        runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1:])
