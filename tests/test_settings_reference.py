"""docs/settings.md documents exactly the environment variables config/settings.py reads.

The variables are found by parsing config/settings.py (no import, so no environment is
needed): every call of an `env_*` helper, `os.environ.get` or `os.getenv`, every
`os.environ[...]` and `... in os.environ`, with a literal name. A setting added without a
row in the table, or a row left behind by a removed setting, fails here.
"""

from __future__ import annotations

import ast
import operator
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_PY = ROOT / "config" / "settings.py"
SETTINGS_MD = ROOT / "docs" / "settings.md"
SETTINGS_SECTION = "## Read by config/settings.py"

ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_list"}
ENVIRON_GETTERS = {"os.environ.get", "environ.get", "os.getenv", "getenv"}
ENVIRON_MAPPINGS = {"os.environ", "environ"}

NO_DEFAULT = "<no default>"
NOT_LITERAL = "<computed>"

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def _literal(node: ast.expr | None) -> object:
    """The value of a literal default (`60`, `"INFO"`, `10 * 1024 * 1024`), else NOT_LITERAL."""
    if node is None:
        return NO_DEFAULT
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, int) and isinstance(right, int):
            return _ARITHMETIC[type(node.op)](left, right)
    return NOT_LITERAL


def _literal_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((kw.value for kw in call.keywords if kw.arg == keyword), None)


def env_reads(source: str) -> dict[str, list[object]]:
    """Each variable read with a literal name, mapped to the defaults it is read with."""
    tree = ast.parse(source)
    # Helpers the module defines for itself (env_float, ...) count as readers too.
    helpers = ENV_HELPERS | {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("env_")
    }
    reads: dict[str, list[object]] = {}

    def found(name: str | None, default: object) -> None:
        if name is not None:
            reads.setdefault(name, []).append(default)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in helpers or func in ENVIRON_GETTERS:
                name = _literal_name(_argument(node, 0, "name"))
                found(name, _literal(_argument(node, 1, "default")))
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ENVIRON_MAPPINGS:
            found(_literal_name(node.slice), NO_DEFAULT)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            if isinstance(node.ops[0], ast.In | ast.NotIn):
                if ast.unparse(node.comparators[0]) in ENVIRON_MAPPINGS:
                    found(_literal_name(node.left), NO_DEFAULT)
    return reads


def doc_table(markdown: str, heading: str) -> list[tuple[str, str]]:
    """(variable, default cell) of each row of the table under `heading`."""
    rows: list[tuple[str, str]] = []
    in_section = False
    for line in markdown.splitlines():
        if line.startswith("## "):
            in_section = line.strip() == heading
            continue
        if in_section and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            match = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0])
            if match and len(cells) >= 3:
                rows.append((match.group(1), cells[1]))
    return rows


def documented_defaults() -> dict[str, str]:
    return dict(doc_table(SETTINGS_MD.read_text(), SETTINGS_SECTION))


def settings_reads() -> dict[str, list[object]]:
    return env_reads(SETTINGS_PY.read_text())


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def test_the_parser_finds_every_kind_of_read_with_a_literal_name():
    source = """
import os
from os import environ
def env_int(name, default): return int(os.environ.get(name, default))
def env_float(name, default): return float(os.environ.get(name) or default)
A = env_int("A_INT", 60)
B = env_bool("B_BOOL", False)
C = env_str("C_STR")
D = env_list("D_LIST", "x,y")
E = os.environ.get("E_GET", "e")
F = os.getenv("F_GETENV")
G = os.environ["G_ITEM"]
H = "H_IN" in os.environ
I = env_float("I_FLOAT", 0.5)
J = env_int(name="J_KEYWORD", default=10 * 1024)
K = env_int(DYNAMIC, 1)
L = environ.get("L_FROM_IMPORT", "")
"""
    assert env_reads(source) == {
        "A_INT": [60],
        "B_BOOL": [False],
        "C_STR": [NO_DEFAULT],
        "D_LIST": ["x,y"],
        "E_GET": ["e"],
        "F_GETENV": [NO_DEFAULT],
        "G_ITEM": [NO_DEFAULT],
        "H_IN": [NO_DEFAULT],
        "I_FLOAT": [0.5],
        "J_KEYWORD": [10240],
        "L_FROM_IMPORT": [""],
    }


def test_settings_read_the_variables_a_deployment_needs():
    # Guards the parser: an empty set on both sides would pass the comparisons below.
    assert {"SECRET_KEY", "DEBUG", "DATABASE_URL", "ALLOWED_HOSTS"} <= set(settings_reads())


def test_every_variable_read_by_settings_is_documented():
    undocumented = sorted(set(settings_reads()) - set(documented_defaults()))
    assert not undocumented, (
        f"config/settings.py reads {undocumented} but docs/settings.md does not document "
        f"them: add a row (variable | default | meaning) under '{SETTINGS_SECTION}'"
    )


def test_every_documented_variable_is_read_by_settings():
    unused = sorted(set(documented_defaults()) - set(settings_reads()))
    assert not unused, (
        f"docs/settings.md documents {unused} under '{SETTINGS_SECTION}' but "
        "config/settings.py does not read them: remove the rows or move them to the "
        "section for variables read outside settings"
    )


def test_each_variable_is_documented_once():
    names = [name for name, _ in doc_table(SETTINGS_MD.read_text(), SETTINGS_SECTION)]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


@pytest.mark.parametrize("name", sorted(settings_reads()))
def test_a_literal_default_is_the_documented_one(name: str):
    defaults = documented_defaults()
    if name not in defaults:
        pytest.skip("undocumented; reported by test_every_variable_read_by_settings_is_documented")
    for value in settings_reads()[name]:
        if value in (NO_DEFAULT, NOT_LITERAL, ""):
            continue  # nothing literal to compare: the doc explains it in words
        expected = f"`{_as_documented(value)}`"
        assert expected in defaults[name], (
            f"{name} defaults to {value!r} in config/settings.py; "
            f"docs/settings.md says {defaults[name]!r}"
        )
