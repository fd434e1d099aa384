"""`cachenet publish` and `cachenet models` from the command line, on an origin data folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cachenet.cli import main
from tests.modelgen import MALFORMED_SAFETENSORS, REAL_MODEL_NAME, make_lora_adapter, real_model_dir, write_safetensors


def _snapshot(data: Path) -> tuple[list[str], str]:
    files = sorted(str(p.relative_to(data)) for p in (data / "store").rglob("*") if p.is_file())
    listing = subprocess.run(
        [sys.executable, "-m", "cachenet", "models", "list", "--data", str(data), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return files, listing


def test_publish_then_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "origin"
    assert (
        main(["publish", str(real_model_dir()), "--name", REAL_MODEL_NAME, "--data", str(data), "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert "stored 87.4 MiB" in out and "deduplicated 0 B" in out
    adapter = make_lora_adapter(tmp_path / "lora", seed=1)
    assert main(["publish", str(adapter), "--name", "org/lora", "--data", str(data), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stored_bytes"] < 300_000  # adapter only: the base was resolved from its config
    assert main(["models", "list", "--data", str(data)]) == 0
    listing = capsys.readouterr().out
    assert REAL_MODEL_NAME in listing and "org/lora" in listing
    assert main(["models", "show", "org/lora", "--data", str(data)]) == 0
    shown = capsys.readouterr().out
    assert f"base: {REAL_MODEL_NAME}" in shown and "adapter_model.safetensors" in shown


@pytest.mark.parametrize("case", sorted(MALFORMED_SAFETENSORS))
def test_malformed_input_exits_nonzero_and_changes_nothing(tmp_path: Path, case: str) -> None:
    data = tmp_path / "origin"
    ok = tmp_path / "ok"
    ok.mkdir()
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(ok / "adapter_model.safetensors"))
    (ok / "config.json").write_text("{}")
    assert main(["publish", str(ok), "--name", "org/ok", "--data", str(data), "--no-progress"]) == 0
    before = _snapshot(data)
    folder = tmp_path / "bad"
    shutil.copytree(ok, folder)
    (folder / "config.json").write_text('{"new": "file that must not be stored"}')
    header, body, length = MALFORMED_SAFETENSORS[case]
    write_safetensors(folder / "adapter_model.safetensors", header, body, length=length)
    proc = subprocess.run(
        [sys.executable, "-m", "cachenet", "publish", str(folder), "--name", "org/bad", "--data", str(data)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "adapter_model.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _snapshot(data) == before


def test_unknown_base_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = make_lora_adapter(tmp_path / "lora", seed=1, base_name="org/never-published")
    status = main(["publish", str(adapter), "--name", "org/lora", "--data", str(tmp_path / "o"), "--no-progress"])
    assert status == 2
    assert "publish the base first" in capsys.readouterr().err
