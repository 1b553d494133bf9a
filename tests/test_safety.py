"""Untrusted files are never unpickled and names that reach the disk are sanitized."""

import ast
from pathlib import Path

from xtalforge.loop.report import safe_name

SRC = Path(__file__).resolve().parent.parent / "src" / "xtalforge"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield owner, name, node


def test_no_unsafe_deserialization_in_the_package():
    problems = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for owner, name, node in _calls(tree):
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if owner in ("pickle", "cloudpickle", "joblib", "dill") and name in ("load", "loads"):
                problems.append(f"{where} {owner}.{name}")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                problems.append(f"{where} yaml.{name} (use safe_load)")
            if owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                problems.append(f"{where} {node.func.id}")
    assert problems == []


def test_names_reaching_the_disk_are_sanitized():
    assert safe_name("../../etc/passwd") == ".._.._etc_passwd"
    assert "/" not in safe_name("a/b\\c d") and " " not in safe_name("a b")
    assert safe_name("") == "x"
    assert len(safe_name("x" * 500)) <= 80
