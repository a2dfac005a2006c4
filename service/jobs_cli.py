"""``python -m service jobs``: list background jobs, re-queue failed ones.

python -m service jobs list [--state failed] [--tenant T] [--limit N]
python -m service jobs retry JOB_ID
python -m service jobs retry --all-failed [--tenant T]
"""

from __future__ import annotations

import argparse
import sys

from pymongo.errors import PyMongoError

from service.config import Settings
from service.core.clock import now
from service.core.ports import JobState

__all__ = ["add_parser", "run"]

_STATES = [s.value for s in JobState]
_ALL = 100_000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``jobs`` command group to the CLI."""
    jobs = sub.add_parser("jobs", help="list background jobs and re-run failed ones")
    cmds = jobs.add_subparsers(dest="command", required=True)
    listing = cmds.add_parser("list", help="jobs, most recently updated first")
    listing.add_argument("--state", choices=_STATES, help="only jobs in this state")
    listing.add_argument("--tenant", help="only this tenant's jobs")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    retry = cmds.add_parser("retry", help="put failed jobs back in the queue")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", help="the failed job to run again")
    which.add_argument("--all-failed", action="store_true", help="every failed job")
    retry.add_argument("--tenant", help="with --all-failed: only this tenant's")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``jobs`` command; return the exit code."""
    from service.database import store_from, unreachable

    store = store_from(settings)
    try:
        if args.command == "list":
            state = JobState(args.state) if args.state else None
            for job in await store.jobs.find(state, args.tenant, max(args.limit, 1)):
                error = job.error.replace("\n", " ")[:200]
                print(
                    f"{job.job_id}\t{job.tenant}\t{job.kind}\t{job.state.value}\t"
                    f"attempts={job.attempts}\t{job.update_time:%Y-%m-%dT%H:%M:%SZ}\t{error}"
                )
            return 0
        failed = await store.jobs.find(JobState.FAILED, args.tenant, _ALL)
        if args.job_id:
            # A job is keyed by its tenant too (store/scoped.py): find whose it is.
            owners = [job.tenant for job in failed if job.job_id == args.job_id]
            if not owners or not await store.jobs.requeue(owners[0], args.job_id, now()):
                sys.stderr.write(f"loom: no failed job with id {args.job_id!r}\n")
                return 1
            print(f"re-queued {args.job_id}")
            return 0
        count = sum([await store.jobs.requeue(job.tenant, job.job_id, now()) for job in failed])
        print(f"re-queued {count} failed jobs")
        return 0
    except PyMongoError as exc:
        sys.stderr.write(unreachable(exc) + "\n")
        return 1
    finally:
        await store.close()
