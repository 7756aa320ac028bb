"""The README's CLI walkthrough, run verbatim on a demo store (one training epoch to keep it short)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from unlearning.demo import run_demo

README = Path(__file__).resolve().parent.parent / "README.md"


def _walkthrough() -> str:
    text = README.read_text()
    section = text.split("### CLI walkthrough on the demo's store", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_cli_walkthrough_runs_verbatim_on_the_demo_store(tmp_path):
    run_demo(tmp_path / "demo-store", epochs=1, log=lambda *a: None, progress=False)
    script = _walkthrough()
    assert "deltastore forget" in script and "deltastore restore" in script and "deltastore audit" in script
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # -e: every command must succeed (a pipeline by its last command, as in an interactive shell:
    # `| head` may close the pipe on a command still writing).
    done = subprocess.run(["bash", "-eu", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "restored == trained, bit for bit: True" in out
    assert "13 ids: 13 recorded, 13 with every step subtracted" in out
    assert re.search(r"forget\s+officer-1\s+137\s+\d+\s+live", out)
    assert out.count("(the trained model)") == 0  # after officer-1 the store expects its result
    receipt = json.loads((tmp_path / "demo-store-out" / "officer-1.json").read_text())
    assert receipt["derived_from"] == "trained" and receipt["ids_file"] == "ledger/ids/officer-1.parquet"
    class_ids = (tmp_path / "demo-store-out" / "class-3-ids.txt").read_text().split()
    lines = out.strip().splitlines()
    i = lines.index(class_ids[0])  # `audit --ids officer-1 | head -n 3`: its first three ids
    assert lines[i : i + 3] == class_ids[:3]
    # purge: officer-1 made final, demo-class-3's ids file redacted, and the store verifies
    assert re.search(r"purged request officer-1: \d+ steps erased", lines[i + 3]), lines[i + 3:]
    assert "redacted: the purged ids removed from the ids files of request(s) demo-class-3" in out
    assert lines[-1].startswith("OK: ")
    ids_dir = tmp_path / "demo-store" / "ledger" / "ids"
    assert not (ids_dir / "officer-1.parquet").exists() and not (ids_dir / "demo-class-3.parquet").exists()
    assert (tmp_path / "demo-store-out" / "purged.safetensors").exists()
