"""Running searches and benchmarks on a ``dask.distributed`` cluster.

scikit-learn's model selection (``GridSearchCV``, ``RandomizedSearchCV``,
``cross_validate``) runs its fits through joblib; inside
``joblib.parallel_config(backend="dask")`` joblib sends them to the workers of
the current ``distributed.Client`` - a ``LocalCluster`` on one machine, or a
scheduler's address for a cluster. Nothing here replaces that route; this
module adds what a torch workload on it needs: each worker's torch thread
count (torch sizes its thread pool from the cores it sees, not from the
worker's share of them), see :doc:`/user_guide/scaling`.

Needs the ``distributed`` extra: ``pip install "advdetect[distributed]"``.
"""

import os

try:  # optional: the [distributed] extra
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - exercised only without the extra
    WorkerPlugin = object

__all__ = ["TorchThreads", "set_torch_threads"]


def _cores():
    """Cores this process may run on (the affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _torch_threads():
    import torch

    return torch.get_num_threads()


class TorchThreads(WorkerPlugin):
    """A ``distributed`` worker plugin that sets torch's thread count on each worker.

    Registered with ``client.register_plugin(TorchThreads(n))``, it calls
    ``torch.set_num_threads(n)`` on every worker, present and future, before
    they run a task. Without it each worker process sizes torch's pool to
    the machine's cores, so that ``n_workers`` processes on one machine run
    ``n_workers x cores`` threads on ``cores`` cores.

    Parameters
    ----------
    n_threads : int or None, default=None
        Threads per worker; ``None`` = the worker's own ``nthreads`` (its
        ``threads_per_worker``).

    See Also
    --------
    set_torch_threads : chooses ``n_threads`` from the cluster and registers the plugin.

    Examples
    --------
    >>> from advdetect.parallel import TorchThreads
    >>> TorchThreads(2).n_threads
    2
    """

    name = "advdetect-torch-threads"

    def __init__(self, n_threads=None):
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
        self.n_threads = n_threads

    def setup(self, worker):
        import torch

        torch.set_num_threads(self.n_threads or int(worker.state.nthreads))


def set_torch_threads(client, n_threads=None):
    """Set torch's thread count on every worker of ``client`` so cores are not oversubscribed.

    Parameters
    ----------
    client : distributed.Client
    n_threads : int or None, default=None
        Torch threads per worker. ``None`` divides each machine's cores
        among the task slots on it (the ``nthreads`` of its workers, summed)
        and takes the smallest quotient over the machines (at least 1): on a
        ``LocalCluster(n_workers=2, threads_per_worker=1)`` on 2 cores, 1
        thread each; on one worker with 1 thread on 8 cores, 8.

    Returns
    -------
    dict
        ``{worker address: torch threads}``, as the workers report them.

    Raises
    ------
    ImportError
        Without ``distributed`` (the ``[distributed]`` extra).

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> from advdetect.parallel import set_torch_threads
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \\
    ...         Client(cluster) as client:  # doctest: +SKIP
    ...     set_torch_threads(client)
    {'tcp://127.0.0.1:40155': 1, 'tcp://127.0.0.1:41903': 1}
    """
    if WorkerPlugin is object:  # pragma: no cover
        raise ImportError('set_torch_threads needs dask.distributed: pip install '
                          '"advdetect[distributed]"')
    if n_threads is None:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        cores = client.run(_cores)
        slots = {}
        for address, info in workers.items():
            host = info.get("host", address)
            slots.setdefault(host, [0, cores.get(address, 1)])
            slots[host][0] += int(info.get("nthreads", 1))
        n_threads = min((max(1, c // s) for s, c in slots.values()), default=1)
    client.register_plugin(TorchThreads(n_threads))
    return client.run(_torch_threads)
