"""safetensors_c/_core.pyi describes the extension as it is: every name the
extension exposes has a stub, no stub names something the extension lacks,
and every stubbed function takes the parameters its text signature gives."""

from __future__ import annotations

import ast
import inspect

import pytest

from safetensors_c import _core

from conftest import PACKAGE

STUB = PACKAGE / "_core.pyi"


def stub_tree():
    return ast.parse(STUB.read_text())


def stub_names(body):
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
    return names


def public(names):
    return {n for n in names if not n.startswith("__")}


def stub_class(name):
    node = stub_names(stub_tree().body)[name]
    assert isinstance(node, ast.ClassDef)
    return stub_names(node.body)


def test_every_module_name_has_a_stub_and_no_stub_is_stale():
    stubbed = public(stub_names(stub_tree().body)) - {"_Stats"}  # a type alias of the stub
    assert sorted(public(dir(_core)) - stubbed) == []
    assert sorted(stubbed - public(dir(_core))) == []


def test_every_file_method_has_a_stub_and_no_stub_is_stale():
    stubbed = public(stub_class("_File"))
    exposed = public(dir(_core._File))
    assert sorted(exposed - stubbed) == []
    assert sorted(stubbed - exposed) == []


def parameters(node: ast.FunctionDef):
    args = node.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    return positional, [a.arg for a in args.kwonlyargs]


def runtime_parameters(function):
    signature = inspect.signature(function)
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    return positional, keyword


FILE_METHODS = sorted(n for n in public(dir(_core._File))
                      if callable(getattr(_core._File, n)))
FUNCTIONS = sorted(n for n in public(dir(_core))
                   if inspect.isbuiltin(getattr(_core, n)))


@pytest.mark.parametrize("name", FILE_METHODS)
def test_file_method_stub_takes_the_runtime_parameters(name):
    node = stub_class("_File").get(name)
    assert isinstance(node, ast.FunctionDef), f"_File.{name} has no stub"
    positional, keyword = parameters(node)
    runtime_positional, runtime_keyword = runtime_parameters(getattr(_core._File, name))
    assert (positional, keyword) == (["self"] + runtime_positional[1:], runtime_keyword)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_stub_takes_the_runtime_parameters(name):
    node = stub_names(stub_tree().body).get(name)
    assert isinstance(node, ast.FunctionDef), f"{name} has no stub"
    assert parameters(node) == runtime_parameters(getattr(_core, name))


def test_read_batch_and_table_stubs_name_their_defaults():
    methods = stub_class("_File")
    read_batch = methods["read_batch"]
    defaults = {a.arg: ast.literal_eval(d)
                for a, d in zip(read_batch.args.kwonlyargs, read_batch.args.kw_defaults)}
    assert defaults == {"threads": 1, "chunk_size": 0, "drop_cache": False,
                        "direct_fd": -1, "align": 4096}
    assert ast.unparse(methods["table"].returns) == \
        "list[tuple[str, str, tuple[int, ...], int, int]]"
