"""The sync code generated from the asyncio source is up to date, and ``make lint`` says so
when it is not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "unasync.py"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_every_generated_module_is_up_to_date() -> None:
    done = _check(ROOT)

    assert done.returncode == 0, done.stderr


def test_a_generated_module_edited_by_hand_fails_the_check(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    generated = copy / "src/busway/sql/_sync/consuming.py"
    generated.write_text(generated.read_text() + "\nEDITED = True\n")

    done = _check(copy)

    assert done.returncode == 1
    assert "src/busway/sql/_sync/consuming.py differs from" in done.stderr
    assert "make generate" in done.stderr


def test_a_source_changed_without_generating_fails_the_check(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    source = copy / "src/busway/sql/_async/consuming.py"
    source.write_text(source.read_text().replace("claiming on a new one", "claiming anew"))

    done = _check(copy)

    assert done.returncode == 1
    assert "src/busway/sql/_sync/consuming.py differs from" in done.stderr


def test_a_generated_module_without_source_fails_the_check(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    (copy / "src/busway/sql/_sync/stray.py").write_text('"""No source."""\n')

    done = _check(copy)

    assert done.returncode == 1
    assert "src/busway/sql/_sync/stray.py has no source" in done.stderr


def test_writing_makes_the_copy_up_to_date_again(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    generated = copy / "src/busway/sql/_sync/consuming.py"
    expected = generated.read_text()
    generated.write_text("# edited\n")

    subprocess.run(
        [sys.executable, str(TOOL), "--root", str(copy)], check=True, capture_output=True
    )

    assert generated.read_text() == expected
    assert _check(copy).returncode == 0
