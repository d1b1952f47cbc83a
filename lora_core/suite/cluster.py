"""Sweeps on a Dask cluster: ``lora-sweep ... --dask local:2`` or ``--dask tcp://host:8786``.

``dask_executor`` connects to a cluster (or starts a local one) and yields a
``concurrent.futures`` executor for ``run_sweep``. On a Dask executor the sweep ships each
config to a worker as the notebook's text and its parameters, and the worker sends the
run's files back (see ``sweep.run_shipped_config``), so workers need lora_core installed
and nothing else: no shared file system, no checkout of the repository.

A worker that dies mid-config (killed, out of memory) costs that config one retry on
another worker; lost a second time, it is recorded as failed with the reason. A local
cluster's scheduler is told not to retry on its own (``allowed-failures: 0``) so that
the sweep's one retry is the only one; a running scheduler keeps its own setting
(Dask's default retries 3 times), and the sweep's retry comes after those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

from .sweep import warm_worker

_LOCAL = re.compile(r"local(?::(\d+))?")
# Dask's default distributed.nanny.pre-spawn-environ, none of which a local cluster sets.
_PRE_SPAWN = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def dask_executor(cluster: str) -> Iterator[Executor]:
    """An executor on the Dask cluster that ``cluster`` names, closed on exit.

    ``local`` or ``local:N`` starts a ``distributed.LocalCluster`` of N worker processes
    (default: the CPU count) with one thread each, and one torch thread in each run;
    ``tcp://HOST:PORT`` (any scheme Dask knows) connects to a running scheduler, and an
    existing file is read as a scheduler file (``dask scheduler --scheduler-file``).
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ValueError(
            f"--dask {cluster} needs Dask: pip install 'lora_core[dask]' (dask[distributed])"
        ) from err
    local = _LOCAL.fullmatch(cluster)
    with contextlib.ExitStack() as stack:
        if local:
            workers = int(local.group(1) or os.cpu_count() or 1)
            if workers < 1:
                raise ValueError(f"--dask {cluster} is not allowed: expected local:N with N >= 1")
            settings = {
                "distributed.scheduler.allowed-failures": 0,
                # Dask's nanny writes its pre-spawn variables into this process's own
                # environment (and so into every kernel started from here later); the
                # thread counts go to the workers through env= instead, and glibc's trim
                # threshold nowhere (see sweep.KERNEL_ENV_DROPPED).
                **{f"distributed.nanny.pre-spawn-environ.{name}": None for name in _PRE_SPAWN},
            }
            before = dict(os.environ)
            with dask.config.set(settings):
                local_cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    # Inherited by each run's kernel: the workers share the cores.
                    env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                )
            _restore_environment(before)
            stack.callback(_restore_environment, before)
            stack.enter_context(local_cluster)
            client = Client(local_cluster)
        elif "://" in cluster or Path(cluster).is_file():
            where = {"address": cluster} if "://" in cluster else {"scheduler_file": cluster}
            try:
                client = Client(**where)
            except (OSError, TimeoutError) as err:  # how Dask reports a scheduler it cannot reach
                raise ValueError(
                    f"--dask {cluster} is not allowed: no scheduler answered there ({type(err).__name__}: "
                    f"{err}); start one, or check the address and the network"
                ) from err
        else:
            raise ValueError(
                f"--dask {cluster} is not allowed: expected local, local:N, a scheduler address "
                "such as tcp://HOST:8786, or an existing scheduler file"
            )
        stack.enter_context(client)
        # Each worker starts its kernel server now, with the cluster, not in its first config.
        # Only a saving: a worker that cannot (another lora_core, say) starts it when it
        # runs its first config, and its configs report whatever else is wrong with it.
        with contextlib.suppress(Exception):
            client.run(warm_worker)
        yield client.get_executor()


def _restore_environment(before: dict[str, str]) -> None:
    """Undo what starting a local cluster wrote into this process's environment (the nanny
    also sets PYTHONHASHSEED and its own pid there), so that a kernel started later from
    this process, by a ``--jobs`` sweep in the same session, inherits the user's."""
    for name in set(os.environ) - set(before):
        del os.environ[name]
    os.environ.update(before)
