"""Every pytest command the Makefile and mk/*.mk run works as written: it at least collects.

Each recipe line that runs ``$(PY) -m pytest`` is run here with ``--collect-only`` in this
environment (``$(PY)`` = this interpreter, make variables expanded from the Makefile), so an
option no plugin knows, a stale marker or an import error in a test module fails here.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKEFILES = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]


def make_variables() -> dict[str, str]:
    """Simple ``NAME := value`` / ``NAME ?= value`` definitions of the Makefiles (PY is this interpreter)."""
    variables = {}
    for makefile in MAKEFILES:
        for line in makefile.read_text(encoding="utf-8").splitlines():
            found = re.match(r"([A-Z_]+)\s*[:?]?=\s*(.*)$", line)
            if found and "$(shell" not in found.group(2):
                variables[found.group(1)] = found.group(2).strip()
    return {**variables, "PY": sys.executable, "VENV": str(Path(sys.executable).parents[1])}


def expanded(text: str, variables: dict[str, str]) -> str:
    for _ in range(5):  # nested references
        text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return text


def pytest_commands() -> list[tuple[str, str]]:
    """``(target, command)`` for every recipe line that runs pytest."""
    commands = []
    for makefile in MAKEFILES:
        target = None
        for line in makefile.read_text(encoding="utf-8").splitlines():
            if re.match(r"^[\w.-]+:", line):
                target = line.split(":")[0]
            elif line.startswith("\t") and "-m pytest" in line:
                commands.append((f"{makefile.name}:{target}", line.strip().lstrip("@")))
    return commands


COMMANDS = pytest_commands()


def test_the_makefiles_run_pytest_in_test_test_fast_and_test_fullsize():
    targets = {target.split(":")[1] for target, _ in COMMANDS}
    assert {"test", "test-fast", "test-fullsize", "test-browser"} <= targets


@pytest.mark.slow
@pytest.mark.parametrize("target,command", COMMANDS, ids=[target for target, _ in COMMANDS])
def test_every_pytest_command_of_the_makefiles_collects(target, command):
    words = shlex.split(expanded(command, make_variables()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    while "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    done = subprocess.run([*words, "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{target}: {command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
