"""The command line as a Unix tool: closed pipes, Ctrl-C, --version, JSON
output, help for every option, scan's exit codes, and progress bars that
appear only on a terminal for long work (in the library as in the CLI)."""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import pickle
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import safetensors_c
from safetensors_c import load_file, save_file
from safetensors_c.cli import SCAN_EXIT, _alignment, _parser, main
from safetensors_c.integrity import save_file_with_digests
from safetensors_c.sharded import load_sharded, save_sharded

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
CLI = [sys.executable, "-m", "safetensors_c"]
DEADLINE = 120  # seconds; only so that a hang fails instead of blocking the suite


# MARK: a closed pipe -----------------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A file whose inspect output is far larger than a pipe's buffer."""
    path = tmp_path_factory.mktemp("many") / "many.safetensors"
    save_file({f"model.layers.{i}.weight": np.zeros(2, np.float32) for i in range(4000)}, path)
    return path


def _first_line_then_close(args):
    """Runs the CLI with stdout into a pipe whose reader takes one line and
    goes away (``| head -1``); returns (status, first line, stderr)."""
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(timeout=DEADLINE), first, err.decode()


@pytest.mark.parametrize("kind", ["table", "json"])
def test_inspect_into_a_closed_pipe_ends_quietly(many, kind):
    args = ["inspect", str(many)] + (["--json"] if kind == "json" else [])
    status, first, err = _first_line_then_close(args)
    assert first  # it did write before the reader left
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert status == 141
    # a reader that stays gets everything, and the status of success
    result = subprocess.run(CLI + args, capture_output=True, env=ENV, timeout=DEADLINE)
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.startswith(first) and result.stdout.count(b"\n") > 4000


def test_verify_and_scan_into_a_closed_pipe_end_quietly(tmp_path, many):
    pkl = tmp_path / "a.pkl"
    pkl.write_bytes(pickle.dumps({"x": np.arange(3.0)}, protocol=4))
    for args in (["verify", *[str(many)] * 3000],
                 ["verify", "--json", *[str(many)] * 3000],
                 ["scan", *[str(pkl)] * 3000],
                 ["scan", "--json", *[str(pkl)] * 3000]):
        status, first, err = _first_line_then_close(args)
        assert first, args[:2]
        assert err == "", args[:2]
        assert status == 141, args[:2]


# MARK: Ctrl-C during convert ---------------------------------------------------

# The CLI with the converter's file writer wrapped: it writes a marker when it
# reaches the named phase and then waits there, so that the test interrupts
# the conversion at a known moment (before the data is written, after the
# file is complete but before convert returns, or after the command is done
# and the program is about to exit).
DRIVER = textwrap.dedent("""
    import os, sys, time
    import safetensors_c.convert as c
    phase, marker = os.environ["PHASE"], os.environ["MARKER"]

    def reached(name):
        if phase == name:
            open(marker, "w").close()
            time.sleep(60)

    real_write, real_sharded = c._write_file, c.save_sharded

    def write(tensors, path, metadata):
        reached("before-write")
        real_write(tensors, path, metadata)
        reached("after-write")

    def sharded(*args, **kwargs):
        reached("before-write")
        result = real_sharded(*args, **kwargs)
        reached("after-write")
        return result

    c._write_file, c.save_sharded = write, sharded
    import safetensors_c.cli as cli
    real_command = cli.cmd_convert

    def command(args):
        status = real_command(args)
        if phase == "done":
            open(marker, "w").close()
            time.sleep(2)  # a window for the interrupt, which must change nothing
        return status

    cli.cmd_convert = command
    sys.exit(cli.main())  # as the program: the arguments come from sys.argv
""")


@pytest.fixture(scope="module")
def big_pickle(tmp_path_factory):
    """A checkpoint whose write takes a moment (96 MiB)."""
    path = tmp_path_factory.mktemp("src") / "big.pkl"
    rng = np.random.default_rng(0)
    tensors = {f"w{i}": rng.standard_normal(4 << 20, dtype=np.float32) for i in range(6)}
    with open(path, "wb") as f:
        pickle.dump(tensors, f, protocol=4)
    return path


def _interrupted_convert(tmp_path, src, dst, phase, extra=()):
    """Runs convert through DRIVER and sends SIGINT once ``phase`` is reached
    (phase "staged": as soon as any new file shows up under tmp_path, i.e.
    while the core writer writes). Returns (status, stderr)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    marker = tmp_path / "marker"
    before = set(_tree(tmp_path))
    env = dict(ENV, PHASE=phase, MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, str(driver), "convert", "-q", str(src), str(dst),
                             *extra], stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and proc.poll() is None:
        if phase == "staged" and set(_tree(tmp_path)) - before - {marker}:
            break
        if phase != "staged" and marker.exists():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, err.decode()


def _tree(directory):
    return [p for p in Path(directory).rglob("*")]


def _leftovers(directory, *keep):
    """Files and directories under ``directory`` other than ``keep``."""
    allowed = {Path(directory) / k for k in ("driver.py", "marker", *keep)}
    return sorted(str(p) for p in _tree(directory)
                  if p not in allowed and not any(a in p.parents for a in allowed))


def _complete(dst, src_tensors):
    loaded = load_file(dst)
    assert sorted(loaded) == sorted(src_tensors)
    for name, array in src_tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.parametrize("phase", ["before-write", "staged", "after-write"])
def test_ctrl_c_leaves_a_complete_file_or_nothing(tmp_path, big_pickle, phase):
    dst = tmp_path / "out.safetensors"
    status, err = _interrupted_convert(tmp_path, big_pickle, dst, phase)
    assert "Traceback" not in err
    assert status in (0, 130), err
    if status == 130:
        assert "interrupted" in err
        assert not dst.exists()
        assert _leftovers(tmp_path) == []  # no staging directory, no temporary file
    else:  # the interrupt came once the output was moving into place
        with open(big_pickle, "rb") as f:
            _complete(dst, pickle.load(f))
    if phase != "staged":  # the worker waits at the phase: the interrupt lands there
        assert status == 130


def test_ctrl_c_once_the_command_is_done_changes_nothing(tmp_path, big_pickle):
    dst = tmp_path / "out.safetensors"
    status, err = _interrupted_convert(tmp_path, big_pickle, dst, "done")
    assert status == 0, err
    with open(big_pickle, "rb") as f:
        _complete(dst, pickle.load(f))
    assert _leftovers(tmp_path, "out.safetensors") == []


@pytest.mark.parametrize("phase", ["before-write", "staged", "after-write"])
def test_ctrl_c_leaves_the_old_output_untouched(tmp_path, big_pickle, phase):
    dst = tmp_path / "out.safetensors"
    save_file({"old": np.arange(5, dtype=np.int64)}, dst)
    os.chmod(dst, 0o640)
    old = dst.read_bytes()
    status, err = _interrupted_convert(tmp_path, big_pickle, dst, phase)
    assert status in (0, 130), err
    if status == 130:
        assert dst.read_bytes() == old
        assert _leftovers(tmp_path, "out.safetensors") == []
    else:
        with open(big_pickle, "rb") as f:
            _complete(dst, pickle.load(f))
    if phase != "staged":
        assert status == 130


@pytest.mark.parametrize("phase", ["before-write", "after-write"])
def test_ctrl_c_during_a_sharded_convert_leaves_no_shard(tmp_path, big_pickle, phase):
    dst = tmp_path / "ckpt"
    status, err = _interrupted_convert(tmp_path, big_pickle, dst, phase,
                                       ["--max-shard-size", "40MB"])
    assert status == 130, err
    assert not dst.exists()
    assert _leftovers(tmp_path) == []


def test_uninterrupted_convert_moves_the_output_into_place(tmp_path):
    src = tmp_path / "a.pkl"
    tensors = {"x": np.arange(6.0), "y": np.ones(3, np.int16)}
    src.write_bytes(pickle.dumps(tensors, protocol=4))
    dst = tmp_path / "a.safetensors"
    save_file({"old": np.zeros(1)}, dst)
    os.chmod(dst, 0o640)
    assert main(["convert", "-q", str(src), str(dst)]) == 0
    _complete(dst, tensors)
    assert (dst.stat().st_mode & 0o777) == 0o640  # an overwrite keeps the permission bits
    assert _leftovers(tmp_path, "a.pkl", "a.safetensors") == []
    # sharded, into an existing directory holding another save's shards
    ckpt = tmp_path / "ckpt"
    big = {f"t{i}": np.full(1000, i, np.float32) for i in range(3)}
    save_sharded({f"old{i}": np.zeros(1000, np.float32) for i in range(5)}, ckpt,
                 max_shard_size=4000, progress=False)
    src.write_bytes(pickle.dumps(big, protocol=4))
    assert main(["convert", "-q", str(src), str(ckpt), "--max-shard-size", "4000"]) == 0
    assert sorted(os.listdir(ckpt)) == ["model-00001-of-00003.safetensors",
                                        "model-00002-of-00003.safetensors",
                                        "model-00003-of-00003.safetensors",
                                        "model.safetensors.index.json"]
    loaded = load_sharded(ckpt, progress=False)
    assert sorted(loaded) == sorted(big)


def test_convert_errors_name_the_output_not_the_staging_directory(tmp_path, capsys):
    src = tmp_path / "a.pkl"
    src.write_bytes(pickle.dumps({"x": np.arange(3.0)}, protocol=4))
    (tmp_path / "adir").mkdir()
    assert main(["convert", str(src), str(tmp_path / "adir")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'adir'}: a directory" in err and ".partial" not in err
    assert main(["convert", str(src), str(tmp_path / "missing" / "a.safetensors")]) == 1
    assert ".partial" not in capsys.readouterr().err
    assert _leftovers(tmp_path, "a.pkl", "adir") == []


# MARK: --version, --json, help ---------------------------------------------------


def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"safetensors-c {safetensors_c.__version__}\n"
    try:
        installed = importlib.metadata.version("safetensors_c")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == safetensors_c.__version__


def test_verify_json_is_one_document(tmp_path, capsys):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": np.zeros(3, np.float32)}, plain)
    signed = tmp_path / "signed.safetensors"
    save_file_with_digests({"b": np.ones(2), "c": np.ones(1)}, signed)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(plain.read_bytes()[:-1])
    ckpt = tmp_path / "ckpt"
    save_sharded({f"w{i}": np.full(100, i, np.float32) for i in range(3)}, ckpt,
                 max_shard_size=500, progress=False, digests=True)
    assert main(["verify", "--json", str(plain), str(signed), str(ckpt)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    records = json.loads(captured.out)
    assert [r["path"] for r in records] == [str(plain), str(signed), str(ckpt)]
    assert records[0] == {"path": str(plain), "ok": True, "error": None, "tensors": 1,
                          "shards": None, "digests": "none", "schemes": []}
    assert records[1]["tensors"] == 2 and records[1]["digests"] == "verified"
    assert records[1]["schemes"] == ["sha256-record-v2"]
    assert records[2]["shards"] == 3 and records[2]["tensors"] == 3
    assert records[2]["schemes"] == ["sha256-record-v2"]
    # the exit status is that of the text output; errors go into the document
    assert main(["verify", "--json", str(plain), str(bad)]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [r["ok"] for r in records] == [True, False]
    assert records[1]["tensors"] is None and records[1]["error"]
    assert main(["verify", "--json", "--require-digests", str(plain)]) == 1
    records = json.loads(capsys.readouterr().out)
    assert "no digests recorded" in records[0]["error"]


def _walk(parser, path=("safetensors-c",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), "(the command)", helps.get(name)
                yield from _walk(sub, path + (name,))
        else:
            yield path, "/".join(action.option_strings) or action.dest, action.help


def test_every_option_and_argument_has_help():
    found = list(_walk(_parser()))
    assert len(found) > 30
    missing = [f"{' '.join(p)} {name}" for p, name, text in found
               if not text or text == argparse.SUPPRESS]
    assert missing == []


def test_inspect_help_explains_its_columns(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for column in ("name", "dtype", "shape", "size", "offset", "align", "file"):
        assert f" {column} " in out
    assert "the largest power of two, up to 4096, that divides offset" in out
    # what the help says is what the column shows
    assert [_alignment(o) for o in (8, 24, 4097, 3 * 4096, 1 << 20)] == [8, 8, 1, 4096, 4096]


# MARK: scan's exit status ------------------------------------------------------


@pytest.fixture
def scan_files(tmp_path):
    safe = tmp_path / "safe.pkl"
    safe.write_bytes(pickle.dumps({"x": np.arange(3.0)}, protocol=4))
    unsafe = tmp_path / "evil.pkl"
    unsafe.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    unknown = tmp_path / "empty.bin"
    unknown.write_bytes(b"")
    return {"safe": str(safe), "unsafe": str(unsafe), "unknown": str(unknown),
            "error": str(tmp_path / "missing.pkl")}


@pytest.mark.parametrize("kinds, status", [
    (["safe"], 0), (["unsafe"], 1), (["error"], 2), (["unknown"], 3),
    (["safe", "unknown"], 3), (["unknown", "error"], 2), (["error", "unsafe"], 1),
    (["unknown", "unsafe", "safe"], 1),
])
def test_scan_exit_status_tells_verdicts_apart(scan_files, kinds, status, capsys):
    assert main(["scan", *[scan_files[k] for k in kinds]]) == status
    capsys.readouterr()
    assert main(["scan", "--json", *[scan_files[k] for k in kinds]]) == status
    verdicts = [r["verdict"] for r in json.loads(capsys.readouterr().out)]
    assert verdicts == kinds


def test_scan_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    out = capsys.readouterr().out
    for verdict, code in SCAN_EXIT.items():
        assert f"  {code}  " in out and (verdict in out)
    assert SCAN_EXIT == {"safe": 0, "unsafe": 1, "error": 2, "unknown": 3}


# MARK: progress bars -----------------------------------------------------------

BAR_TEXT = ("Saving shards", "Loading shards", "shard/s", "it/s", "%|")
LARGE = 72 << 20  # above the 64 MiB from which a bar is worth showing


def _shards(total_bytes):
    n = total_bytes // 4 // 2
    return {"a": np.zeros(n, np.float32), "b": np.ones(n, np.float32)}


@pytest.mark.parametrize("size", [256, LARGE])
def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, capsys, size):
    tensors = _shards(size)
    save_sharded(tensors, tmp_path / "c", max_shard_size=size // 2 + 8)
    assert len(load_sharded(tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert not any(text in err for text in BAR_TEXT), err


def test_progress_true_forces_a_bar_and_false_never_shows_one(tmp_path, capsys):
    tensors = _shards(256)
    save_sharded(tensors, tmp_path / "c", max_shard_size=136, progress=True)
    load_sharded(tmp_path / "c", progress=True)
    err = capsys.readouterr().err
    assert "Saving shards" in err and "Loading shards" in err
    save_sharded(tensors, tmp_path / "d", max_shard_size=136, progress=False)
    load_sharded(tmp_path / "d", progress=False)
    assert capsys.readouterr().err == ""


def _stderr_on_a_terminal(code):
    """Runs ``code`` in a subprocess whose stderr is a pseudo-terminal;
    returns what it wrote there."""
    master, slave = pty.openpty()
    # a terminal of 24 x 100 (a new pseudo-terminal is 0 x 0: tqdm would draw nothing)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=slave, env=ENV)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=DEADLINE) == 0, out
    return out.decode(errors="replace")


@pytest.mark.parametrize("size, shown", [(256, False), (LARGE, True)])
def test_a_terminal_gets_a_bar_for_large_work_only(tmp_path, size, shown):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from safetensors_c.sharded import save_sharded, load_sharded
        assert sys.stderr.isatty()
        n = {size} // 4 // 2
        tensors = {{"a": np.zeros(n, np.float32), "b": np.ones(n, np.float32)}}
        save_sharded(tensors, {str(tmp_path / "c")!r}, max_shard_size={size // 2 + 8})
        assert len(load_sharded({str(tmp_path / "c")!r})) == 2
        sys.stderr.write("done\\n")
    """)
    err = _stderr_on_a_terminal(code)
    assert "done" in err
    assert ("Saving shards" in err) is shown, err
    assert ("Loading shards" in err) is shown, err


@pytest.mark.parametrize("size, shown", [(256, False), (LARGE, True)])
def test_convert_shows_a_bar_on_a_terminal_for_large_inputs_only(tmp_path, size, shown):
    src = tmp_path / "a.pkl"
    src.write_bytes(pickle.dumps({"x": np.zeros(size // 4, np.float32)}, protocol=4))
    code = ("import sys; from safetensors_c.cli import main; "
            f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / 'a.safetensors')!r}]))")
    err = _stderr_on_a_terminal(code)
    assert ("converting" in err) is shown, err
