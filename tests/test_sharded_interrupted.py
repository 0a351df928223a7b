"""A sharded save killed while overwriting a checkpoint of the same layout, and
shards copied between saves, are refused when loaded or verified, naming the
shard; they never load as a silent mix of two saves.

The interruption is real: save_sharded runs in a child process that is
killed with SIGKILL right after its Nth shard is on disk (the child stops
there, so the kill always lands between two shards), over a complete earlier
save in the same directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import safetensors_c
from safetensors_c import SafetensorError
from safetensors_c.cli import main
from safetensors_c.sharded import SAVE_ID_KEY, load_sharded, safe_open_sharded, save_sharded

INDEX = "model.safetensors.index.json"
TESTS = os.path.dirname(os.path.abspath(__file__))  # for the child's import of rank_processes
DEADLINE = 120  # seconds; only a hang would come near it


def shard_name(i, n=4):
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def tensors(step):
    """Four tensors of 4000 bytes, whose values say which save wrote them."""
    return {f"w{i}": np.full(1000, step * 10 + i, np.float32) for i in range(4)}


def save(step, directory):
    """save_sharded(tensors(step)) into four shards of one tensor each; its index."""
    return save_sharded(tensors(step), directory, max_shard_size=4000, progress=False)


def first_values(loaded):
    """Each tensor's first value: step * 10 + its number, for the save that wrote it."""
    return {name: int(a[0]) for name, a in loaded.items()}


def set_index_save_id(directory, save_id):
    """Rewrites the index with another save id (None: without one, as other tools write it)."""
    index = json.loads((directory / INDEX).read_text())
    if save_id is None:
        del index["metadata"][SAVE_ID_KEY]
    else:
        index["metadata"][SAVE_ID_KEY] = save_id
    (directory / INDEX).write_text(json.dumps(index))


_CHILD = textwrap.dedent("""
    import signal, sys
    import numpy as np
    from safetensors_c import _writer, sharded

    directory, step, stop_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tensors = {f"w{i}": np.full(1000, step * 10 + i, np.float32) for i in range(4)}
    real_write, written = _writer.write, []

    def write(*args, **kwargs):
        result = real_write(*args, **kwargs)
        written.append(args[2])
        if len(written) == stop_after:
            print("written", flush=True)
            signal.pause()  # killed here, between two shards
        return result

    _writer.write = write
    sharded.save_sharded(tensors, directory, max_shard_size=4000, progress=False)
    print("finished", flush=True)
""")


def save_killed_after(directory, step, shards_written):
    """save_sharded(tensors(step), directory) in a child process, SIGKILLed
    once ``shards_written`` shards are written."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory), str(step),
                              str(shards_written)], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line == "written\n", line
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=DEADLINE) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=DEADLINE)
        child.stdout.close()


def saved_with_a_foreign_index(tmp_path):
    """A complete save (step 1) whose index carries no save id, as other tools
    write it: it still loads."""
    directory = tmp_path / "ckpt"
    save(1, directory)
    set_index_save_id(directory, None)
    assert load_sharded(directory, progress=False).keys() == tensors(1).keys()
    return directory


@pytest.fixture
def interrupted(tmp_path):
    """A complete save (step 1), overwritten by a save (step 2) killed after
    two of its four shards."""
    directory = tmp_path / "ckpt"
    save(1, directory)
    assert sorted(os.listdir(directory)) == [shard_name(i) for i in (1, 2, 3, 4)] + [INDEX]
    save_killed_after(directory, 2, 2)
    return directory


def assert_mix_refused(shard, call, *args, **kwargs):
    """``call(*args, **kwargs)`` refuses the checkpoint as a mix of saves,
    naming ``shard``."""
    with pytest.raises(SafetensorError) as info:
        call(*args, **kwargs)
    assert info.value.code == "STC_ERR_SHARD_MISMATCH"
    assert f"shard {shard!r} is not from the save this index describes" in str(info.value)
    return info.value


def test_the_child_really_left_a_mix(interrupted):
    # Shards 1-2 of the new save beside shards 3-4 and the index of the old one.
    values = {}
    for i in (1, 2, 3, 4):
        with safetensors_c.safe_open(interrupted / shard_name(i)) as f:
            (name,) = f.keys()
            values[name] = int(f.get_tensor(name)[0])
    assert values == {"w0": 20, "w1": 21, "w2": 12, "w3": 13}


def test_load_sharded_refuses_an_interrupted_overwrite(interrupted):
    assert_mix_refused(shard_name(1), load_sharded, interrupted, progress=False)
    assert_mix_refused(shard_name(1), load_sharded, interrupted, backend="pread", progress=False)
    assert_mix_refused(shard_name(1), safe_open_sharded, interrupted / INDEX)


def test_verify_refuses_an_interrupted_overwrite(interrupted, capsys):
    assert main(["verify", str(interrupted)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"BAD {interrupted}")
    assert f"shard '{shard_name(1)}' is not from the save this index describes" in captured.err


def test_a_complete_save_over_the_mix_loads(interrupted):
    save(3, interrupted)
    loaded = load_sharded(interrupted, progress=False)
    assert first_values(loaded) == {"w0": 30, "w1": 31, "w2": 32, "w3": 33}
    assert main(["verify", "--quiet", str(interrupted)]) == 0


def test_killed_after_every_shard_but_before_the_index(tmp_path):
    directory = tmp_path / "ckpt"
    save(1, directory)
    save_killed_after(directory, 2, 4)  # every new shard, the old index
    assert_mix_refused(shard_name(1), load_sharded, directory, progress=False)


def test_an_index_without_a_save_id_is_removed_before_shards_are_overwritten(tmp_path):
    # An index another tool wrote cannot refuse new shards: the save removes
    # it first, so the interrupted directory is no checkpoint at all.
    directory = saved_with_a_foreign_index(tmp_path)
    save_killed_after(directory, 2, 2)
    assert not (directory / INDEX).exists()
    with pytest.raises(FileNotFoundError, match="no sharded checkpoint here"):
        load_sharded(directory, progress=False)


# MARK: shards mixed by hand ----------------------------------------------------


def test_a_shard_copied_from_another_save_is_refused(tmp_path, capsys):
    save_a, save_b = tmp_path / "a", tmp_path / "b"
    save(1, save_a)
    save(2, save_b)
    shutil.copyfile(save_a / shard_name(3), save_b / shard_name(3))
    assert_mix_refused(shard_name(3), load_sharded, save_b, progress=False)
    assert_mix_refused(shard_name(3), safe_open_sharded, save_b, framework="np",
                       verify_digests=False)
    assert main(["verify", str(save_b)]) == 1
    assert f"shard '{shard_name(3)}'" in capsys.readouterr().err


def test_a_shard_without_a_save_id_under_an_index_with_one_is_refused(tmp_path):
    directory = tmp_path / "ckpt"
    save(1, directory)
    safetensors_c.save_file({"w1": tensors(1)["w1"]}, directory / shard_name(2))
    error = assert_mix_refused(shard_name(2), load_sharded, directory, progress=False)
    assert "carries no save id" in str(error)


def test_indexes_without_a_save_id_still_load(tmp_path):
    # As transformers and huggingface_hub write them: no save id anywhere,
    # or in the shards only.
    directory = saved_with_a_foreign_index(tmp_path)
    for i in (1, 2, 3, 4):
        part = safetensors_c.load_file(directory / shard_name(i))
        safetensors_c.save_file(part, directory / shard_name(i), metadata={"format": "pt"})
    loaded = load_sharded(directory, progress=False)
    assert first_values(loaded) == {"w0": 10, "w1": 11, "w2": 12, "w3": 13}


@pytest.mark.parametrize("save_id", ["", "ABCDEF" * 6, 12, "0" * 31, ["x"]])
def test_a_malformed_save_id_in_the_index_is_refused(tmp_path, save_id):
    directory = tmp_path / "ckpt"
    save(1, directory)
    set_index_save_id(directory, save_id)
    with pytest.raises(SafetensorError, match="must be 32 lowercase hex digits") as info:
        load_sharded(directory, progress=False)
    assert info.value.code == "STC_ERR_INVALID_INDEX"


def test_every_shard_and_the_index_carry_one_fresh_save_id(tmp_path):
    first = save(1, tmp_path)
    second = save(1, tmp_path)
    assert first["metadata"][SAVE_ID_KEY] != second["metadata"][SAVE_ID_KEY]
    for i in (1, 2, 3, 4):
        with safetensors_c.safe_open(tmp_path / shard_name(i)) as f:
            assert f.metadata()[SAVE_ID_KEY] == second["metadata"][SAVE_ID_KEY]


# MARK: the distributed load ------------------------------------------------------


_DISTRIBUTED_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from rank_processes import free_port, process_group
    import torch.distributed as dist
    from safetensors_c import SafetensorError, sharded

    with process_group(0, 1, free_port(), timeout=120):
        try:
            sharded.load_sharded(sys.argv[1], process_group=dist.group.WORLD)
        except SafetensorError as exc:
            print(exc.code, exc)
        else:
            print("loaded")
""")


def test_the_distributed_load_refuses_an_interrupted_overwrite(interrupted):
    pytest.importorskip("torch.distributed")
    result = subprocess.run([sys.executable, "-c", _DISTRIBUTED_CHILD, str(interrupted), TESTS],
                            capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("STC_ERR_SHARD_MISMATCH "), result.stdout
    assert f"shard {shard_name(1)!r} is not from the save" in result.stdout
