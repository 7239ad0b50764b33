"""Programs that run *inside* the sandbox (never imported by em_trainer): read as text and copied in by
``code_tasks.grade_function``. ``codec.py`` is shared by both sides; ``candidate_main.py`` runs as the candidate's
user and serves calls to its function; ``checker_main.py`` runs as the checker's user, runs the dataset's tests and
prints the verdict."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def source(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")
