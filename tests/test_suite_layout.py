"""The main lane collects every test file under tests/ except tests/ttnn in one pytest run with
rootdir-relative imports, so two test files with the same basename break collection of the whole
suite. This keeps that from landing again."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent


def test_main_lane_test_files_have_unique_basenames():
    names = [p.name for p in TESTS.rglob("test_*.py") if "ttnn" not in p.relative_to(TESTS).parts[:1]]
    clashes = sorted(name for name, n in Counter(names).items() if n > 1)
    assert clashes == [], f"test files sharing a basename: {clashes}"
