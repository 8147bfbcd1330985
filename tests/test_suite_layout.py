"""The suite's layout: the main lane collects every test file under tests/ except tests/ttnn in
one pytest run with rootdir-relative imports, so two test files with the same basename break
collection of the whole suite; and what tests share lives in tests/support, so no test module
imports another test module or a conftest."""

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent
SUPPORT = TESTS / "support"


def _outside_support() -> list[Path]:
    return [p for p in TESTS.rglob("*.py") if SUPPORT not in p.parents]


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_main_lane_test_files_have_unique_basenames():
    names = [p.name for p in TESTS.rglob("test_*.py") if "ttnn" not in p.relative_to(TESTS).parts[:1]]
    clashes = sorted(name for name, n in Counter(names).items() if n > 1)
    assert clashes == [], f"test files sharing a basename: {clashes}"


def test_outside_support_there_are_only_test_modules_and_conftests():
    others = sorted(str(p.relative_to(TESTS)) for p in _outside_support()
                    if not (p.name.startswith("test_") or p.name == "conftest.py"))
    assert others == [], f"shared test code belongs in tests/support: {others}"


def test_no_test_module_imports_another_test_module():
    local = {p.stem for p in _outside_support()}      # test modules and conftests, imported by bare name
    bad = []
    for path in TESTS.rglob("*.py"):
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if module.startswith(".") or top in local or (top == "tests" and not module.startswith("tests.support")):
                bad.append(f"{path.relative_to(TESTS)}: {module}")
    assert bad == [], f"import shared helpers from tests.support instead: {bad}"
