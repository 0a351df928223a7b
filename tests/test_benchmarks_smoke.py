"""Smoke test of benchmarks/run.py: it runs end to end and writes its Markdown.

Tiny sizes, one run per row, torch and the reference package switched off
(so their skip path is exercised too): about 10 s. No timing assertions.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_tiny_run_writes_markdown(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--tiny",
         "--sizes", "small=0", "--without", "torch,safetensors", "--out", str(out),
         "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    markdown = (out / "results.md").read_text()
    assert "safetensors_c load_file" in markdown
    assert "## Targets" in markdown and "## Machine" in markdown
    assert "torch is not available" in markdown
    assert "safetensors_c" in proc.stdout and "verdict:" in proc.stdout
    # A reduced run says, in the terminal, that its targets are for the 1 GiB run.
    assert "set for the full run's 1 GiB checkpoint" in proc.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith("stc-bench-")]
