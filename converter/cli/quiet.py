"""Quiet by default, verbose on request: TensorFlow's logging, and progress lines on a terminal.

TensorFlow 2.21 logs from C++ before its logging is set up (absl writes to the process's stderr
whatever ``TF_CPP_MIN_LOG_LEVEL`` says: oneDNN notices, a CUDA probe on a CPU-only machine) and from
Python (deprecation warnings). Unless ``-v``, the level is set before it is imported and the
process's stderr (file descriptor 2, which worker processes inherit) is pointed at the null device
while it runs (``silenced_stderr``); expected errors are printed once it is restored. Progress goes
to the original stderr, and only where that is a terminal: a CI log gets the report alone.
"""

import contextlib
import os
import sys
import time

import click

# TF's C++ levels: 0 everything, 1 no INFO, 2 no WARNING, 3 no ERROR (a CPU-only machine's CUDA probe logs one)
QUIET_CPP_LEVEL = "3"
VERBOSE_CPP_LEVEL = "0"
STDERR_FD = 2
ENVIRONMENT = {
    False: {"TF_CPP_MIN_LOG_LEVEL": QUIET_CPP_LEVEL, "ABSL_MIN_LOG_LEVEL": QUIET_CPP_LEVEL},
    True: {"TF_CPP_MIN_LOG_LEVEL": VERBOSE_CPP_LEVEL},
}


def verbosity_options(command):
    """Add ``-v/--verbose`` and ``-q/--quiet`` to a click command."""
    command = click.option("-q", "--quiet", is_flag=True,
                           help="Print only the verdict (and errors); no progress.")(command)
    return click.option("-v", "--verbose", is_flag=True,
                        help="Let TensorFlow log (its C++ and Python messages are silenced otherwise).")(command)


def quiet_tensorflow(verbose=False):
    """Set TensorFlow's logging before it is imported: errors silenced unless ``verbose``."""
    for name, value in ENVIRONMENT[bool(verbose)].items():
        if verbose or name not in os.environ:
            os.environ[name] = value
    if not verbose:
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)


@contextlib.contextmanager
def silenced_stderr(verbose=False):
    """Point file descriptor 2 at the null device inside the block (unless ``verbose``); restore it after."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), STDERR_FD)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, STDERR_FD)
        os.close(saved)


def progress_printer(quiet=False):
    """A ``progress(phase)`` callback printing ``[seconds] phase`` where stderr is a terminal; None otherwise.

    It writes to a copy of stderr taken now, so that it still reaches the terminal inside ``silenced_stderr``.
    """
    if quiet or not sys.stderr.isatty():
        return None
    stream = os.fdopen(os.dup(STDERR_FD), "w", buffering=1)
    started = time.perf_counter()

    def progress(phase):
        stream.write(f"[{time.perf_counter() - started:5.1f} s] {phase}\n")

    return progress
