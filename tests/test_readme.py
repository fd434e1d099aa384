"""The README's commands as written: every `cachenet` command and flag it shows exists, the
offline ones run, and the Hugging Face CLI it names is the one huggingface_hub installs."""

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cachenet.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`(cachenet [^`]+)`")


def _shell_lines() -> list[str]:
    """Every command line of the README's sh blocks (continuations joined, comments dropped)."""
    out: list[str] = []
    for block in _FENCE.findall(README.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)
        pending = ""
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].rstrip()
            if line.startswith(" ") and pending:  # a synopsis continued on the next line
                pending += " " + line.strip()
                continue
            if pending:
                out.append(pending)
            pending = line.strip()
        if pending:
            out.append(pending)
    return [ln for ln in out if ln]


def _cachenet_commands() -> list[str]:
    lines = [part.strip() for ln in _shell_lines() for part in ln.split("&&")]
    lines += _INLINE.findall(README.read_text())
    return sorted({ln for ln in lines if ln.startswith("cachenet ")})


def _subparser(words: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of the deepest subcommand named by `words` and the words it consumed."""
    parser = build_parser(words)
    used: list[str] = []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        used.append(word)
    return parser, used


COMMANDS = _cachenet_commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) >= 12, COMMANDS
    assert "huggingface-cli" not in README.read_text()  # huggingface_hub 2.x installs only `hf`


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_and_flag_exists(line: str) -> None:
    words = line.split()[1:]
    parser, used = _subparser([w for w in words if re.fullmatch(r"[a-z][a-z-]*", w)][:3])
    assert used, f"no such command: {line}"
    known = {opt for action in parser._actions for opt in action.option_strings}
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
    assert flags <= known, f"{line}: unknown {sorted(flags - known)} for `cachenet {' '.join(used)}`"


def test_offline_readme_commands_run_as_written(tmp_path: Path) -> None:
    runnable = [ln for ln in COMMANDS if ln.startswith("cachenet placement generate")]
    runnable += [ln for ln in COMMANDS if ln.startswith("cachenet placement solve")]
    assert len(runnable) == 2, runnable
    for line in runnable:
        argv = shlex.split(line)[1:]
        proc = subprocess.run(
            [sys.executable, "-m", "cachenet", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (line, proc.stderr[-2000:])


def test_the_hugging_face_cli_the_readme_names_is_installed() -> None:
    assert "hf download org/model" in README.read_text()
    hf = shutil.which("hf") or str(Path(sys.executable).parent / "hf")
    proc = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
