"""A short, fixed-seed slice of the soak (bench/soak.py; ``make soak`` runs
the whole one): two replicas, twenty concurrent streams for ten seconds,
one replica SIGKILLed and restarted, then the audit of the database."""

from __future__ import annotations

from pathlib import Path

from bench.soak import parser, soak


def test_soak_slice_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    args = parser().parse_args(
        ["--replicas", "2", "--streams", "20", "--seconds", "10", "--seed", "7", "--no-db-restart"]
    )
    outcome, found, text = soak(args, log_dir=tmp_path)
    assert outcome.acks, text
    assert outcome.faults[0].endswith("SIGKILL replica 1"), text
    assert (found.lost, found.duplicated) == (0, 0), text
    assert (found.in_progress, found.mid_reply_threads) == (0, 0), text
    assert (found.live_leases, found.running_jobs) == (0, 0), text
