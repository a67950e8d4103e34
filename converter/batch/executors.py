"""Where models run: worker processes on this machine, or Ray tasks on a cluster.

Each executor is ``run(jobs, workers, started, address)``, yielding each job's ``ModelRecord`` as it
finishes; a worker that dies or a task that fails yields a failed record for its model, never an error.
"""

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal

from converter import _warm
from converter.batch.report import failed_record, one_line
from converter.batch.worker import process_model
from converter.errors import ConvertError

# TensorFlow and torch hold threads and locks that a forked child would inherit in a broken state
START_METHOD = "spawn"
WORKER_DIED = "the worker process died (out of memory or a crash); rerun the batch to retry this model"
# Linux prctl option: a signal for this process when its parent dies
PR_SET_PDEATHSIG = 1
# how a worker exits when stopped by SIGTERM
EXIT_STOPPED = 3


_busy = False


class _Stopped(BaseException):
    """SIGTERM: the batch is stopping or gone; unwind (removing any partial file), then exit."""


def _on_terminate(signum, frame):
    if _busy:
        raise _Stopped()
    os._exit(EXIT_STOPPED)


def _worker_init(parent, threads=None):
    # Ctrl-C reaches every process of the terminal; the batch alone decides, and stops its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_terminate)
    # a batch killed outright (kill -9) must not leave workers converting on their own
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere an orphan finishes its model
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(EXIT_STOPPED)
    # the worker keeps its runtimes, reference graphs and torch modules for every model it verifies;
    # each runtime gets this worker's share of the cores
    _warm.set_threads(threads)


def _in_worker(job):
    global _busy
    _busy = True
    try:
        return process_model(job)
    except _Stopped:
        os._exit(EXIT_STOPPED)
    finally:
        _busy = False


def _run_processes(jobs, workers, started, address=None):
    """Yield each job's record, at most ``workers`` models (default: the CPU cores) in worker processes at once."""
    workers = min(workers or default_jobs(), len(jobs))
    queue = list(reversed(jobs))
    running, pool = {}, None
    context = multiprocessing.get_context(START_METHOD)
    others = set(multiprocessing.active_children())
    try:
        while queue or running:
            if pool is None:
                pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=workers, mp_context=context, initializer=_worker_init,
                    initargs=(os.getpid(), max(1, default_jobs() // workers)))
            broken = False
            while queue and len(running) < workers:
                job = queue.pop()
                running[pool.submit(_in_worker, job)] = job
                started(job.model.id)
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    yield future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    broken = True
                    yield failed_record(job.model, WORKER_DIED)
                except Exception as error:  # e.g. the output directory became unwritable: this model fails
                    yield failed_record(job.model, f"unexpected {type(error).__name__}: {one_line(error)}")
            if broken:
                # every model the dead pool held comes back failed; the rest go to a fresh pool
                for future in list(running):
                    yield failed_record(running.pop(future).model, WORKER_DIED)
                pool.shutdown(wait=True)
                pool = None
    except BaseException:
        # Ctrl-C or an error here: stop the workers now; each removes its partial file as it exits
        for child in set(multiprocessing.active_children()) - others:
            child.terminate()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(jobs, workers, started, address=None):
    """Yield each job's record, run as Ray tasks on the cluster at ``address`` (default: a local instance)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("--executor ray needs Ray; install it with: pip install 'ckpt-convert[ray]'") from None
    own = not ray.is_initialized()
    if own:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConvertError(f"cannot start or join Ray at {address or 'a local instance'} ({one_line(error)}); "
                               "check --address") from None
    workers = min(workers or max(1, int(ray.cluster_resources().get("CPU", 1))), len(jobs))
    task = ray.remote(num_cpus=1)(process_model)
    queue, running = list(reversed(jobs)), {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop()
                running[task.remote(job)] = job
                started(job.model.id)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job = running.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as error:
                    yield failed_record(job.model, f"the Ray task failed: {one_line(error)[:500]}")
    finally:
        for ref in running:
            ray.cancel(ref)  # not force: the task's conversion removes its partial file as it stops
        if own:
            ray.shutdown()


RUNNERS = {"process": _run_processes, "ray": _run_ray}
EXECUTORS = tuple(RUNNERS)


def default_jobs():
    """Models at once by default: the CPU cores this process may use."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
