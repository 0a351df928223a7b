"""The public framework modules come from one registry: their sharded
functions are the neutral ones with the framework bound
(``_frameworks.bind_framework``: the same parameters for every framework),
and the compatibility switch's list of submodules is the registry's.

Only NumPy is imported here; the other frameworks' modules are checked in
their own processes (tests/frameworks/test_suite.py, see
tests/test_frameworks.py), since some crash when imported together."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import numpy as np
import pytest

from safetensors_c import _frameworks, compat, sharded

from conftest import PACKAGE


def neutral_parameters(function):
    return [p for p in inspect.signature(function).parameters.values() if p.name != "framework"]


def test_every_adapter_file_is_registered_with_a_public_module():
    on_disk = {p.stem for p in (PACKAGE / "_adapters").glob("*.py") if p.stem != "__init__"}
    assert set(_frameworks.PUBLIC_MODULES) == on_disk
    for name in _frameworks.PUBLIC_MODULES:
        assert (PACKAGE / f"{name}.py").is_file(), f"safetensors_c/{name}.py is missing"


def test_compat_hands_out_exactly_the_registry_modules():
    assert compat._SUBMODULES == {
        f"safetensors.{name}": f"safetensors_c.{name}" for name in _frameworks.PUBLIC_MODULES
    }
    for name in _frameworks.PUBLIC_MODULES:  # the docstring's list is the same one
        assert f"``safetensors.{name}``" in compat.__doc__


def test_a_registry_entry_reaches_the_compat_switch():
    """A framework added to the registry (here an alias of NumPy's adapter
    under a new module name) is handed out by the switch with no edit to
    compat.py: the switch reads the registry."""
    code = (
        "import sys, types\n"
        "from safetensors_c import _frameworks\n"
        "_frameworks._ADAPTERS['newfw'] = 'newfw'\n"
        "_frameworks.PUBLIC_MODULES += ('newfw',)\n"
        "stand_in = types.ModuleType('safetensors_c.newfw')\n"
        "stand_in.__spec__ = __import__('importlib').machinery.ModuleSpec("
        "'safetensors_c.newfw', None, origin='newfw')\n"
        "sys.modules['safetensors_c.newfw'] = stand_in\n"
        "from safetensors_c import compat\n"
        "compat.install()\n"
        "import safetensors.newfw\n"
        "print(safetensors.newfw is stand_in)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_framework_names_list_every_accepted_name_once():
    text = _frameworks.framework_names()
    listed = [name.strip('"') for group in text.split(", ") for name in group.split("/")]
    assert listed == list(_frameworks.FRAMEWORKS)
    assert '"pt"/"torch"/"pytorch"' in text and '"flax"/"jax"' in text


# NumPy's module re-exports the neutral functions (framework= defaults to
# NumPy); a NumPy binding stands in for the other frameworks' bound ones here.
BOUND_SAVE = _frameworks.bind_framework(sharded.save_sharded, "numpy", "tests.bound")
BOUND_LOAD = _frameworks.bind_framework(sharded.load_sharded, "numpy", "tests.bound")


@pytest.mark.parametrize("bound, neutral", [(BOUND_SAVE, sharded.save_sharded),
                                            (BOUND_LOAD, sharded.load_sharded)])
def test_bound_functions_have_the_neutral_parameters_but_framework(bound, neutral):
    assert list(inspect.signature(bound).parameters.values()) == neutral_parameters(neutral)
    assert "max_workers" in inspect.signature(BOUND_LOAD).parameters
    shown = pydoc.render_doc(bound, renderer=pydoc.plaintext)
    title = next(line for line in shown.splitlines() if line.startswith(neutral.__name__ + "("))
    assert "framework" not in title and "prefix" in title
    assert "NumPy" in bound.__doc__ and inspect.getdoc(neutral) in bound.__doc__
    assert bound.__module__ == "tests.bound" and bound.__name__ == neutral.__name__


def test_the_bound_framework_cannot_be_overridden(tmp_path):
    tensors = {"a": np.arange(4, dtype=np.float32)}
    BOUND_SAVE(tensors, tmp_path / "ckpt", progress=False)
    with pytest.raises(TypeError, match="framework"):
        BOUND_LOAD(tmp_path / "ckpt", framework="pt")
    with pytest.raises(TypeError, match="framework"):
        BOUND_SAVE(tensors, tmp_path / "other", framework="pt")
    assert not (tmp_path / "other").exists()


def test_bound_functions_take_positional_and_keyword_arguments_as_declared(tmp_path):
    tensors = {f"t{i}": np.full((64,), i, np.float32) for i in range(4)}
    index = BOUND_SAVE(tensors, tmp_path / "ckpt", 300, "weights", {"k": "v"},
                       progress=False, digests=True)
    assert len(set(index["weight_map"].values())) > 1
    loaded = BOUND_LOAD(tmp_path / "ckpt", "cpu", prefix="weights", max_workers=1,
                        verify_digests=True, progress=False)
    assert list(loaded) == list(tensors)
    for name, value in tensors.items():
        assert np.array_equal(loaded[name], value)
    with pytest.raises(TypeError, match="multiple values for argument 'device'"):
        BOUND_LOAD(tmp_path / "ckpt", "cpu", device="cpu")
    with pytest.raises(TypeError, match="too many positional arguments"):
        BOUND_LOAD(tmp_path / "ckpt", "cpu", "weights")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_worker'"):
        BOUND_LOAD(tmp_path / "ckpt", max_worker=2)
    with pytest.raises(ValueError, match="prefix"):  # the neutral function's own checks
        BOUND_SAVE(tensors, tmp_path / "bad", prefix="../x", progress=False)


def test_binding_needs_a_framework_parameter():
    def no_framework(path):
        return path

    with pytest.raises(TypeError, match="no framework= parameter"):
        _frameworks.bind_framework(no_framework, "numpy", __name__)
    with pytest.raises(_frameworks.SafetensorError, match="'nofw' is not supported"):
        _frameworks.bind_framework(sharded.load_sharded, "nofw", __name__)
