"""A throwaway PostgreSQL cluster for FerretDB, made by scripts/postgres.sh (the
same set-up `make run` uses) in a temporary folder; one per process, shared."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["Postgres", "process_cpu_seconds"]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "postgres.sh"
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """CPU time (user + system) of a live process, all its threads; with
    ``reaped_children`` also that of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the name: state is field 3, so utime (14) is fields[11].
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


class Postgres:
    """``Postgres.shared()`` starts the process's cluster on first use and
    stops it at exit; ``create_database()`` gives each FerretDB its own."""

    _shared: Postgres | None = None
    _names = itertools.count()

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="loom-postgres-")

    @classmethod
    def shared(cls) -> Postgres:
        if cls._shared is None:
            cluster = cls().start()
            atexit.register(cluster.stop)
            cls._shared = cluster
        return cls._shared

    def start(self) -> Postgres:
        """Start the cluster (made on first start; again after ``stop(remove=False)``)."""
        self._script("start", self.dir)
        return self

    def _script(self, *args: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new, empty database; returns FerretDB's ``--postgresql-url`` for it."""
        return self._script("createdb", self.dir, f"ferretdb_{os.getpid()}_{next(self._names)}")

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` in ``database`` as the cluster's superuser; its output."""
        return self._script("psql", self.dir, database, "-At", "-c", sql)

    def cpu_seconds(self) -> float:
        """CPU time of the whole cluster so far: the postmaster, the backends
        it has reaped and the live ones."""
        pid = int((Path(self.dir) / "data" / "postmaster.pid").read_text().split()[0])
        total = process_cpu_seconds(pid, reaped_children=True)
        for child in _children(pid):
            try:
                total += process_cpu_seconds(child)
            except OSError:  # exited since listed; counted in the parent from now on
                continue
        return total

    def stop(self, *, remove: bool = True) -> None:
        """Stop the cluster (its clients' connections cut), and remove its
        files unless ``remove`` is false."""
        subprocess.run([str(SCRIPT), "stop", self.dir], capture_output=True, check=False)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
