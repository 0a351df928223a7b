"""An adversary's second pass over load_model/load_into and the text they
and the CLI print (issue 18, sections 4 and 6).

- A model whose ``state_dict()`` hands out copies (a state-dict hook that
  clones or casts, an overridden ``state_dict``) is still loaded: the fast
  path writes only into tensors that are the model's own, and anything else
  goes through ``load_state_dict``; never a silent no-op returning
  ``(set(), [])``.
- A model tensor the file cannot be copied into (a sparse buffer) is refused
  before any byte reaches the other tensors.
- Names from the file and the file's path reach load_model's and
  load_into's error messages escaped: no control character of the file
  drives the terminal a traceback is printed to.
- argparse's own usage errors quote the command line (where a hostile file
  name arrives through a shell glob) escaped too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import safetensors_c.torch as ct  # noqa: E402
from safetensors_c._core import SafetensorError  # noqa: E402
from safetensors_c.cli import main  # noqa: E402

try:
    import safetensors.torch as reference
except ImportError:  # pragma: no cover - the reference is installed in CI
    reference = None

ESCAPES = "\x1b]0;owned\x07\x1b[2J\r\u202e\x9b"


def assert_safe(text: str) -> None:
    bad = [ch for ch in text if not (ch.isprintable() or ch in "\n\t")]
    assert not bad, f"raw control characters {bad!r} in {text!r}"


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))


def _saved(tmp_path, value: float = 7.0) -> str:
    src = Small()
    with torch.no_grad():
        for t in src.state_dict().values():
            t.fill_(value)
    path = str(tmp_path / "small.safetensors")
    ct.save_model(src, path)
    return path


def _loaded(model, value: float = 7.0) -> bool:
    return all(torch.all(t == value) for t in (model.lin.weight, model.lin.bias, model.scale))


# MARK: models whose state_dict is not their own tensors --------------------

def _cloning_hook(module, state, prefix, local_metadata):
    return {k: v.clone() for k, v in state.items()}


class OwnStateDict(Small):
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return {k: v.clone() for k, v in state.items()}


def _hooked() -> torch.nn.Module:
    model = Small()
    model._register_state_dict_hook(_cloning_hook)
    return model


@pytest.mark.parametrize("make", [_hooked, OwnStateDict], ids=["state-dict-hook", "override"])
@pytest.mark.parametrize("backend", [None, "mmap", "pread"])
def test_a_model_whose_state_dict_copies_is_still_loaded(tmp_path, make, backend):
    path = _saved(tmp_path)
    model = make()
    assert ct.load_model(model, path, backend=backend) == (set(), [])
    assert _loaded(model)


@pytest.mark.skipif(reference is None, reason="needs the reference package")
def test_the_reference_loads_such_a_model_too(tmp_path):
    path = _saved(tmp_path)
    model = _hooked()
    reference.load_model(model, path)
    assert _loaded(model)


def test_a_copying_state_dict_still_moves_the_version_counter(tmp_path):
    path = _saved(tmp_path)
    model = _hooked()
    y = (model.lin.weight * model.lin.weight).sum()
    ct.load_model(model, path)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_a_copying_state_dict_with_strict_names_changes_nothing(tmp_path):
    path = str(tmp_path / "extra.safetensors")
    ct.save_file({"lin.weight": torch.full((4, 4), 7.0), "lin.bias": torch.full((4,), 7.0),
                  "scale": torch.full((4,), 7.0), "stray": torch.zeros(1)}, path)
    model = _hooked()
    before = model.lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match='Unexpected key.*"stray"'):
        ct.load_model(model, path)
    assert torch.equal(model.lin.weight, before)


# MARK: a tensor no copy can fill --------------------------------------------

def test_a_sparse_buffer_is_refused_before_any_write(tmp_path):
    path = _saved(tmp_path)
    model = Small()
    model.scale = torch.ones(4).to_sparse()
    before = model.lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="scale.*sparse"):
        ct.load_model(model, path)
    assert torch.equal(model.lin.weight, before)


# MARK: file text in load_model's and load_into's errors ---------------------

def test_unexpected_names_from_the_file_are_escaped(tmp_path):
    path = str(tmp_path / "hostile.safetensors")
    ct.save_file({"lin.weight": torch.zeros(4, 4), "lin.bias": torch.zeros(4),
                  "scale": torch.zeros(4), "x" + ESCAPES: torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="Unexpected key") as info:
        ct.load_model(Small(), path)
    assert_safe(str(info.value))
    assert '"lin.weight"' not in str(info.value)  # only the stray name


def test_a_plain_unexpected_name_keeps_torch_wording(tmp_path):
    path = str(tmp_path / "plain.safetensors")
    ct.save_file({"lin.weight": torch.zeros(4, 4), "lin.bias": torch.zeros(4),
                  "scale": torch.zeros(4), "stray": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError) as info:
        ct.load_model(Small(), path)
    assert 'Unexpected key(s) in state_dict: "stray".' in str(info.value)


def test_a_hostile_file_name_is_escaped_in_load_model_errors(tmp_path):
    path = str(tmp_path / f"m{ESCAPES}.safetensors")
    ct.save_file({"lin.weight": torch.zeros(4, 4), "stray": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="Missing key") as info:
        ct.load_model(Small(), path)
    assert_safe(str(info.value))


@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_a_hostile_file_name_is_escaped_in_load_into_errors(tmp_path, backend):
    path = str(tmp_path / f"m{ESCAPES}.safetensors")
    ct.save_file({"w": torch.zeros(4)}, path)
    for tensors, code in (({"absent": torch.zeros(4)}, "STC_ERR_NO_SUCH_TENSOR"),
                          ({"w": torch.zeros(5)}, "STC_ERR_SHAPE_MISMATCH"),
                          ({"w": torch.zeros(4, dtype=torch.float64)}, "STC_ERR_DTYPE_MISMATCH")):
        with pytest.raises(SafetensorError) as info:
            ct.load_into(tensors, path, backend=backend)
        assert info.value.code == code
        assert_safe(str(info.value))
        assert repr(path) in str(info.value)


def test_a_plain_file_name_stays_plain_in_load_into_errors(tmp_path):
    path = str(tmp_path / "m.safetensors")
    ct.save_file({"w": torch.zeros(4)}, path)
    with pytest.raises(SafetensorError) as info:
        ct.load_into({"absent": torch.zeros(4)}, path)
    assert str(info.value) == f"{path}: no tensor named 'absent' in this file"


# MARK: the CLI's usage errors -----------------------------------------------

@pytest.mark.parametrize("argv", [
    ["inspect", "a.safetensors", "b" + ESCAPES],  # a glob that matched two files
    ["inspect", "--json", "a.safetensors", ESCAPES],
    ["verify", "--" + ESCAPES, "a.safetensors"],
], ids=["stray-argument", "stray-after-option", "unknown-option"])
def test_usage_errors_escape_the_command_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert_safe(captured.out + captured.err)
    assert "\\x1b]0;owned\\x07" in captured.err


def test_usage_errors_are_safe_bytes_from_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "safetensors_c.cli", "inspect", "a", "b" + ESCAPES],
        capture_output=True, timeout=120)
    assert result.returncode == 2
    assert b"\x1b" not in result.stderr and b"\x07" not in result.stderr
    assert b"unrecognized arguments: b\\x1b]0;owned\\x07" in result.stderr


# MARK: inference tensors -----------------------------------------------------

def test_inference_tensors_are_refused_outside_inference_mode_before_any_write(tmp_path):
    path = _saved(tmp_path)
    model = Small()
    with torch.inference_mode():
        model.scale = torch.ones(4)  # the only inference tensor
    before = model.lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="scale.*inference_mode"):
        ct.load_model(model, path)
    assert torch.equal(model.lin.weight, before)  # nothing written
    assert torch.equal(model.scale, torch.ones(4))


def test_torch_refuses_the_same_write(tmp_path):
    with torch.inference_mode():
        model = Small()
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        model.load_state_dict({k: torch.zeros_like(v) for k, v in Small().state_dict().items()})


def test_load_into_refuses_an_inference_tensor_outside_inference_mode(tmp_path):
    path = str(tmp_path / "w.safetensors")
    ct.save_file({"w": torch.full((4,), 7.0), "v": torch.full((4,), 7.0)}, path)
    with torch.inference_mode():
        frozen = torch.zeros(4)
    plain = torch.zeros(4)
    with pytest.raises(RuntimeError, match="inference_mode"):
        ct.load_into({"v": plain, "w": frozen}, path)
    assert torch.equal(frozen, torch.zeros(4)) and torch.equal(plain, torch.zeros(4))


def test_inside_inference_mode_an_inference_model_loads(tmp_path):
    path = _saved(tmp_path)
    with torch.inference_mode():
        model = Small()
        assert ct.load_model(model, path) == (set(), [])
        assert _loaded(model)
