"""Smoke test of benchmarks/run.py: it runs end to end and writes its Markdown.

Tiny sizes, one run per row, torch and the reference package switched off
(so their skip path is exercised too): about 10 s. And benchmarks/peers.py --quick
(16 MiB, every installed peer, 1 run per table: about 40 s). No timing assertions.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.source_tree  # runs the scripts in benchmarks/


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


# -- benchmarks/peers.py ---------------------------------------------------------------------

PEER_MODULES = {"safetensors": "safetensors load_model (reference)",
                "runai_model_streamer": "Run:ai Model Streamer (SafetensorsStreamer)",
                "fastsafetensors": "fastsafetensors (CPU, nogds)"}


def measured(markdown: str, label: str) -> int:
    """How many table rows give ``label`` a time in seconds (not "failed"/"not measured")."""
    return len(re.findall(r"^\| " + re.escape(label) + r" \| \d+\.\d{3}[ |]", markdown, re.M))


def test_peers_quick_run_reports_every_loader_or_why_not(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "peers"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "peers.py"), "--quick",
         "--out", str(out), "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (out / "results.md").read_text()
    for title in ("float32, 16 MiB, 1 file(s), warm", "1 file(s), cold", "file(s), warm",
                  "file(s), cold"):
        assert title in markdown
    # Ours and the floors measured in all four tables, the floors first and last.
    assert measured(markdown, "**safetensors_c load_model**") == 4
    for floor in ("memcpy of every byte, all cores (warm floor)",
                  "sequential read of the file(s) (cold floor)"):
        for phase in ("first", "last"):
            assert measured(markdown, f"{floor}, {phase}") == 2, (floor, phase)
    for module, label in PEER_MODULES.items():
        if importlib.util.find_spec(module) is None:
            assert f"{label} skipped: `{module}` is not installed" in proc.stdout
        else:
            assert measured(markdown, label) == 4, label
    runs = json.loads((out / "results.json").read_text())["runs"]
    loads = [r for r in runs if r["loader"] == "ours"]
    assert len(loads) == 4 and not any(r.get("error") for r in runs)
    # Warm runs had every page resident; every run recorded the machine's load.
    assert all(r["resident_min"] == 1.0 for r in runs if r["cache"] == "warm")
    assert all(r["load_avg_1min"] >= 0 and r["others_cpu_s"] >= 0 for r in runs)
    assert all(r["peak_sampled_kib"]["RssAnon"] > 0 for r in loads)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("stc-peers-")]


def test_peer_check_refuses_a_model_that_was_not_loaded(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import peer_loaders
    finally:
        sys.path.pop(0)
    files = peer_loaders.write_checkpoints(str(tmp_path), 2 << 20, "bfloat16")
    untouched = peer_loaders.build_model(2 << 20, "bfloat16")
    assert "do not hold the saved values" in peer_loaders.check(untouched, files.expected)
    import safetensors_c.torch

    safetensors_c.torch.load_model(untouched, files.single)
    assert peer_loaders.check(untouched, files.expected) is None
    with torch.no_grad():  # one element off in one tensor
        next(iter(untouched.state_dict().values())).view(-1)[-1] += 1
    assert "1 of" in peer_loaders.check(untouched, files.expected)


# -- benchmarks/contention.py ----------------------------------------------------------------


def test_contention_quick_run_starts_and_stops_its_busy_processes(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "contention"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "contention.py"), "--quick",
         "--busy", "0,2", "--repeat", "2", "--loaders", "ours,reference.1thread",
         "--out", str(out), "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    if importlib.util.find_spec("safetensors") is None:
        assert "skipped: `safetensors` is not installed" in proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (out / "results.md").read_text()
    assert "## 0 competing busy process(es)" in markdown
    assert "## 2 competing busy process(es)" in markdown
    assert measured(markdown, "**safetensors_c load_model**") == 2
    saved = json.loads((out / "results.json").read_text())
    runs = saved["runs"]
    assert [r["busy"] for r in runs if r["loader"] == "ours"] == [0, 0, 2, 2]
    # With no busy process nothing is watched; with two, they ran during the loads.
    assert all(r["watched_cpu_s"] == 0 for r in runs if r["busy"] == 0)
    assert sum(r["watched_cpu_s"] for r in runs if r["busy"] == 2) > 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith("stc-contention-")]


def test_drop_cache_run_shows_what_each_load_leaves_cached(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "drop_cache.py"), "--size", "8MiB",
         "--repeat", "1", "--tmpdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in proc.stdout.splitlines() if line.startswith("| ours") or
            line.startswith("| reference")}
    assert set(rows) == {"ours", "ours drop_cache=True", "reference"}
    # What the pages left cached say: a plain load keeps the file cached, drop_cache does not.
    assert float(rows["ours"].rstrip("%")) > 50
    assert float(rows["ours drop_cache=True"].rstrip("%")) < 50
