"""Today's code beside this tree's in one benchmark run: the files of a base revision.

The base revision's files are exported once (``git archive``, nothing registered in the repository)
into ``.cache/bench/base-<commit>`` and run with the same interpreter, its own ``converter`` package
first on the path.
"""

import io
import os
import pathlib
import shutil
import subprocess
import tarfile

from _common import ROOT

BENCH = ROOT / ".cache" / "bench"


def tree(revision):
    """The root of an export of ``revision``'s files (made on first use, in the benchmark cache)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    path = BENCH / f"base-{commit[:12]}"
    if not (path / "converter").is_dir():
        staging = path.with_name(path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as files:
            files.extractall(staging, filter="data")
        staging.rename(path)
    return path


def environment(root):
    """The environment that makes a child process import ``converter`` from ``root``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def code_roots(base):
    """``{label: root}``: the base revision's tree and this one."""
    return {f"base {base}": tree(base), "this tree": pathlib.Path(ROOT)}
