"""
CPU tests of the vmep Python package (pytest; scripts/test.sh runs them).
The package is imported from python/ of this checkout and the library from
$VMEP_BUILD_DIR/src (default build-test), unless VMEP_LIBRARY is set.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
BUILD = os.path.join(ROOT, os.environ.get("VMEP_BUILD_DIR", "build-test"))
if not os.environ.get("VMEP_LIBRARY") and os.path.exists(
        os.path.join(BUILD, "src", "libvmep.so")):
    os.environ["VMEP_LIBRARY"] = os.path.join(BUILD, "src", "libvmep.so")


@pytest.fixture
def lib():
    from vmep import _lib
    try:
        return _lib.load()
    except OSError as exc:
        pytest.skip(f"no libvmep.so: {exc}")


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def build_dir():
    if not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
        pytest.skip(f"no build folder at {BUILD}")
    return BUILD
