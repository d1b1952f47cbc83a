"""Warm kernels (lora_core.suite.kernels): each run's kernel forked from a kernel server
that has made the notebooks' imports, and seen from inside exactly as a kernel launched
the usual way: its own process, folder, sys.path, environment and random state."""

import os
import sys
from pathlib import Path

import nbformat
import pytest

from lora_core.suite import kernels
from lora_core.suite.execute import execute_notebook

pytestmark = pytest.mark.skipif(not kernels.enabled(), reason="warm kernels need fork (Linux)")

# What a kernel reports about itself: whether torch was imported before its first cell,
# its parent, folder, sys.path and environment, and two draws of unseeded generators.
PROBE = """\
import sys
torch_before_first_cell = "torch" in sys.modules
import json, os, random
from pathlib import Path
import numpy as np
import torch
left_by_another_run = hasattr(torch, "_lora_core_test_marker")
torch._lora_core_test_marker = True
metrics = {
    "torch_before_first_cell": torch_before_first_cell,
    "left_by_another_run": left_by_another_run,
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "jpy_parent_pid": int(os.environ["JPY_PARENT_PID"]),
    "cwd": os.getcwd(),
    "path0": sys.path[0],
    "probe_value": os.environ.get("LORA_CORE_TEST_PROBE"),
    "mplbackend": os.environ.get("MPLBACKEND"),
    "threads": torch.get_num_threads(),
    "random": random.random(),
    "numpy_random": float(np.random.random()),
    "torch_random": float(torch.rand(())),
}
Path(output_dir, "metrics.json").write_text(json.dumps({"metrics": metrics}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('output_dir: str = "out"  # where metrics.json goes')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(PROBE)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / "probe.ipynb")
    return folder / "probe.ipynb"


def run(probe: Path, folder: Path) -> dict:
    return execute_notebook(probe, folder, render_html=False)["metrics"]


def running_servers() -> list:
    return [server for server in kernels._servers.values() if not isinstance(server, OSError)]


def server_pids() -> set[int]:
    return {server.process.pid for server in running_servers()}


def test_a_kernel_is_forked_from_a_server_that_has_made_the_imports(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "1")
    seen = run(probe, tmp_path / "run")
    assert seen["torch_before_first_cell"]
    assert seen["ppid"] in server_pids() and seen["ppid"] != os.getpid()
    # ipykernel watches its parent, so the kernel exits when the server does.
    assert seen["jpy_parent_pid"] == seen["ppid"]


def test_switched_off_the_kernel_is_launched_as_usual(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "0")
    seen = run(probe, tmp_path / "run")
    assert not seen["torch_before_first_cell"]
    assert seen["ppid"] == os.getpid()


def test_a_warm_kernel_sees_what_a_launched_one_sees(probe, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_CORE_TEST_PROBE", "same")
    seen = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(kernels.SWITCH, switch)
        seen[switch] = run(probe, tmp_path / switch)
    for key in ("cwd", "path0", "probe_value", "mplbackend", "threads"):
        assert seen["1"][key] == seen["0"][key], key
    assert seen["1"]["cwd"] == str(probe.parent) and seen["1"]["probe_value"] == "same"


def test_every_warm_kernel_is_a_new_process_with_fresh_state(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "1")
    first, second = run(probe, tmp_path / "first"), run(probe, tmp_path / "second")
    assert first["pid"] != second["pid"] and first["ppid"] == second["ppid"]
    # The first run marked the torch module it imported: the second run's is not that one.
    assert not first["left_by_another_run"] and not second["left_by_another_run"]
    # Unseeded generators are seeded from the OS in each kernel, not copied from the server.
    assert first["random"] != second["random"]
    assert first["numpy_random"] != second["numpy_random"]
    assert first["torch_random"] != second["torch_random"]


def test_another_environment_gets_a_server_of_its_own(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "1")
    monkeypatch.setenv("LORA_CORE_TEST_PROBE", "a")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    a = run(probe, tmp_path / "a")
    monkeypatch.setenv("LORA_CORE_TEST_PROBE", "b")
    b = run(probe, tmp_path / "b")
    assert (a["probe_value"], b["probe_value"]) == ("a", "b")
    assert a["ppid"] != b["ppid"] and {a["ppid"], b["ppid"]} <= server_pids()
    # Read by the OpenMP runtime when torch loads: right only because the server is new.
    assert a["threads"] == b["threads"] == 1


def test_without_the_provisioner_registered_the_kernel_is_launched_as_usual(probe, tmp_path, monkeypatch):
    # lora_core importable from a checkout but not installed: no entry point to find.
    monkeypatch.setenv(kernels.SWITCH, "1")
    monkeypatch.setattr(kernels, "registered", lambda: False)
    seen = run(probe, tmp_path / "run")
    assert seen["ppid"] == os.getpid() and not seen["torch_before_first_cell"]


def test_a_server_that_cannot_start_leaves_the_kernel_launched_as_usual(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "1")
    monkeypatch.setenv("LORA_CORE_TEST_PROBE", "no server")  # a new environment: a new server
    monkeypatch.setattr(kernels, "WARM_MODULES", ("lora_core_no_such_module",))
    seen = run(probe, tmp_path / "run")
    assert seen["ppid"] == os.getpid() and not seen["torch_before_first_cell"]


def test_closing_the_servers_ends_them(probe, tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.SWITCH, "1")
    run(probe, tmp_path / "run")
    servers = running_servers()
    kernels.close_servers()
    assert servers and all(server.process.poll() is not None for server in servers)
    assert not kernels._servers


def test_the_server_is_this_interpreter_only(tmp_path):
    assert kernels._is_this_ipykernel([sys.executable, "-m", "ipykernel_launcher", "-f", "c.json"])
    assert not kernels._is_this_ipykernel(
        [str(tmp_path / "python"), "-m", "ipykernel_launcher", "-f", "c.json"]
    )
    assert not kernels._is_this_ipykernel([sys.executable, "-m", "other_kernel", "-f", "c.json"])


def test_a_kernel_exits_when_its_server_does(tmp_path):
    # The server exits when its input closes (the process that started it is gone, say,
    # a killed Dask worker); ipykernel then sees its parent change and exits too.
    import time

    from jupyter_client.connect import write_connection_file

    connection, _ = write_connection_file(str(tmp_path / "kernel.json"))
    server = kernels._Server(dict(os.environ))
    pid = server.fork(["-f", connection], str(tmp_path), dict(os.environ))
    assert kernels.alive(pid)
    server.process.stdin.close()
    assert server.process.wait(timeout=30) == 0
    deadline = time.monotonic() + 30
    while kernels.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if kernels.alive(pid):
        os.kill(pid, 9)
        pytest.fail("the kernel outlived its server by 30 s")


def test_the_server_forks_without_python_s_thread_warning_and_leaves_no_filter():
    # Python 3.12+ warns on forking a process with threads (the server has OpenBLAS's);
    # the server silences that warning for its own forks only, not for the kernel's code.
    import threading
    import time
    import warnings

    before = list(warnings.filters)
    sleeper = threading.Thread(target=time.sleep, args=(1,), daemon=True)
    sleeper.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = kernels._fork()
        if pid == 0:
            os._exit(0 if warnings.filters[0][0] == "always" else 1)  # the caller's filters, as they were
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not [w for w in caught if "fork()" in str(w.message)]
    assert warnings.filters == before


def test_a_killed_runner_leaves_no_kernel_and_no_socket_files(tmp_path):
    # A sweep's worker that is killed (Ctrl-C, a lost Dask worker) cannot shut its kernels
    # down; its server, whose input then closes, ends them and removes their sockets: of
    # a kernel still running, and of one that ended with the worker (no manager left to
    # remove them).
    import signal
    import time

    from jupyter_client.connect import write_connection_file

    server = kernels._Server(dict(os.environ))
    started = []
    for name in ("running", "ended"):
        connection, info = write_connection_file(
            str(tmp_path / f"{name}.json"), transport="ipc", ip=str(tmp_path / f"{name}-sockets")
        )
        sockets = [f"{info['ip']}-{info[port]}" for port in ("shell_port", "iopub_port", "hb_port")]
        pid = server.fork(["-f", connection], str(tmp_path), dict(os.environ))
        deadline = time.monotonic() + 60
        while not all(os.path.exists(path) for path in sockets) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(os.path.exists(path) for path in sockets), "the kernel never bound its sockets"
        started.append(pid)
    os.kill(started[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while kernels.alive(started[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kernels.alive(started[1])
    server.process.stdin.close()  # what the death of the process that started it does
    assert server.process.wait(timeout=30) == 0
    assert not kernels.alive(started[0])
    assert not list(tmp_path.glob("*-sockets-*"))


def test_only_an_ipc_kernel_has_socket_files_to_remove(tmp_path):
    from jupyter_client.connect import write_connection_file

    tcp, _ = write_connection_file(str(tmp_path / "tcp.json"))
    ipc, info = write_connection_file(str(tmp_path / "ipc.json"), transport="ipc", ip=str(tmp_path / "s"))
    assert kernels._socket_files(["-f", tcp]) == []
    assert sorted(kernels._socket_files(["-f", ipc])) == sorted(
        f"{tmp_path / 's'}-{info[port]}"
        for port in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    )
    assert kernels._socket_files(["-f", str(tmp_path / "missing.json")]) == []
    assert kernels._socket_files(["--no-connection-file"]) == []
