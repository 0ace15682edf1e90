"""The scoring process: a job it cannot run is one error for that job (the run stops with one
line), its traceback and every library's log line go to the run's log, never the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ScoringError, UserError
from orchestrator.scoring import ScoringProcess


def _module(folder: Path, name: str, body: str) -> object:
    """A module imported here from ``folder``, which the child's path does not have."""
    (folder / f"{name}.py").write_text(body)
    sys.path.insert(0, str(folder))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(folder))


async def test_a_module_missing_in_the_scoring_process_is_one_error_and_the_child_goes_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Importable here, not in the child (the folder is on this process's path only).
    ghost = _module(tmp_path, "ghost_scorer", "def score(x):\n    return x\n")
    log = tmp_path / "orchestrator.log"
    scoring = ScoringProcess()
    await scoring.start(log)
    try:
        with pytest.raises(ScoringError, match="ModuleNotFoundError: No module named 'ghost_scorer'") as caught:
            await scoring.run(ghost.score, 1)  # type: ignore[attr-defined]
        assert isinstance(caught.value, UserError) and caught.value.exit_code == 2
        assert "\n" not in str(caught.value)
        assert await scoring.run(len, "abc") == 3  # the child is still there
    finally:
        await scoring.close()
        sys.modules.pop("ghost_scorer", None)
    assert "Traceback" in log.read_text() and "ghost_scorer" in log.read_text()
    assert "Traceback" not in capfd.readouterr().err


async def test_a_library_logging_an_error_in_the_scoring_process_writes_to_the_run_log_only(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "orchestrator.log"
    scoring = ScoringProcess()
    await scoring.start(log)
    try:
        # langdetect's way: the module-level logging.error() on a root with no handler of its own.
        await scoring.run(logging.error, "Unable to detect language for text %s", "12345")
    finally:
        await scoring.close()
    err = capfd.readouterr().err
    assert "Unable to detect language" not in err and "ERROR:root" not in err
    assert "Unable to detect language for text 12345" in log.read_text()


def test_a_module_missing_in_a_command_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import orchestrator.report
    from orchestrator.cli import main

    def missing(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")

    monkeypatch.setattr(orchestrator.report, "write_report", missing)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err and "Traceback" not in err


async def test_a_scoring_process_that_cannot_start_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(ScoringError, match=r"cannot start the scoring process .*no-python"):
        await ScoringProcess().start(tmp_path / "orchestrator.log")
