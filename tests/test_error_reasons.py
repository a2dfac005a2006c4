"""The README's table of ErrorInfo reasons is written from the source and
must stay true: every reason the service can send, with its status code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from service.api.errors import classify
from service.api.reasons import WHEN, ScanError, render, scan, update_readme
from service.core.errors import NotFound, ThreadBusy
from tests.support.process import REPO, clean_env


def test_readme_table_is_what_the_source_emits() -> None:
    readme = (REPO / "README.md").read_text()
    assert update_readme(readme, render(scan())) == readme, (
        "the README's error reasons are stale: run "
        "`.venv/bin/python -m service error-reasons --write README.md`"
    )


def test_every_explained_reason_is_still_emitted() -> None:
    stale = set(WHEN) - set(scan())
    assert not stale, f"WHEN in service/api/reasons.py explains reasons never sent: {stale}"


def test_scan_finds_each_way_a_reason_is_given() -> None:
    found = scan()
    # A literal reason=, a class's own reason, NotFound's kind, the fallback.
    assert found["MODEL_TIMEOUT"].codes == {grpc.StatusCode.UNAVAILABLE}
    assert found["THREAD_BUSY"].codes == {grpc.StatusCode.ABORTED}
    assert found["THREAD_NOT_FOUND"].codes == {grpc.StatusCode.NOT_FOUND}
    assert found["INTERNAL"].codes == {grpc.StatusCode.INTERNAL}
    assert "service/core/keys.py" in " ".join(found["API_KEY_MISSING"].sites)
    # The table's codes are the ones the interceptor sends.
    for error in (ThreadBusy("thread_1"), NotFound("thread", "thread_1")):
        code, sent = classify(error)
        assert found[sent.reason].codes == {code}


def _scan_source(tmp_path: Path, source: str) -> dict[str, object]:
    package = tmp_path / "service"
    package.mkdir(parents=True)
    (package / "mod.py").write_text(source)
    return dict(scan(package))


def test_scan_reads_literals_and_refuses_what_it_cannot_list(tmp_path: Path) -> None:
    found = _scan_source(
        tmp_path,
        "raise NotFound('widget', widget_id)\n"
        "raise errors.Unavailable('down', reason='WIDGETS_DOWN')\n",
    )
    assert set(found) == {"WIDGET_NOT_FOUND", "WIDGETS_DOWN"}

    with pytest.raises(ScanError, match="reason= must be a string literal"):
        _scan_source(tmp_path / "a", "raise Unavailable('down', reason=REASON)\n")
    with pytest.raises(ScanError, match="NotFound's kind"):
        _scan_source(tmp_path / "b", "raise NotFound(kind, widget_id)\n")


def test_a_reason_without_an_explanation_cannot_be_rendered(tmp_path: Path) -> None:
    package = tmp_path / "service"
    package.mkdir()
    (package / "mod.py").write_text("raise Aborted('later', reason='NEW_REASON')\n")
    with pytest.raises(KeyError, match=r"NEW_REASON \(service/mod.py:1\) has no line in WHEN"):
        render(scan(package))


def test_cli_prints_the_table_without_any_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "error-reasons"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == render(scan())
