"""Both ways to install: `cmake --install` puts the package next to the
library (and the package finds that library), and `pip install ./python`
works with no package index."""
import os
import subprocess
import sys

import pytest


def run_python(code, **env):
    full = dict(os.environ)
    full.pop("VMEP_LIBRARY", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, check=True,
                          capture_output=True, text=True, cwd="/").stdout


def test_cmake_install_layout(build_dir, tmp_path):
    subprocess.run(["cmake", "--install", build_dir, "--prefix",
                    str(tmp_path)], check=True, capture_output=True)
    libs = [d for d in ("lib", "lib64") if (tmp_path / d / "libvmep.so")
            .exists()]
    assert libs, "libvmep.so not installed"
    libdir = tmp_path / libs[0]
    assert (libdir / "python" / "vmep" / "buffer.py").exists()
    out = run_python("import vmep; print(vmep.library_path())",
                     PYTHONPATH=str(libdir / "python"))
    assert os.path.realpath(out.strip()) == os.path.realpath(
        libdir / "libvmep.so")


def test_pip_install_offline(root, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
         "--target", str(target), os.path.join(root, "python")],
        capture_output=True, text=True)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("no pip for this python")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "vmep" / "__init__.py").exists()
    out = run_python("import vmep; print(vmep.__file__)",
                     PYTHONPATH=str(target))
    assert out.strip().startswith(str(target))
