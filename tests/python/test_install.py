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


def test_venv_pip_install_no_index(root, build_dir, tmp_path):
    """README's line as a stranger runs it: a fresh venv without torch,
    `pip install --no-index ./python` (no --no-deps), then the library is
    confirmed on a CPU machine and the torch-based names say what is
    missing instead of failing the import."""
    try:
        import ensurepip  # noqa: F401  (python3-venv on Debian)
    except ImportError:
        pytest.skip("no venv/ensurepip for this python (python3-venv)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                   capture_output=True)
    py = str(venv / "bin" / "python")
    proc = subprocess.run(
        [py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
         os.path.join(root, "python")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = os.path.join(build_dir, "src", "libvmep.so")
    code = ("import vmep\n"
            "assert vmep.library_available(), 'library_available'\n"
            "assert vmep.is_available() is False\n"
            "try:\n"
            "    vmep.Buffer\n"
            "    raise SystemExit('Buffer without torch')\n"
            "except AttributeError as exc:\n"
            "    assert 'PyTorch' in str(exc), exc\n"
            "print(vmep.__file__, vmep.library_path())\n")
    env = dict(os.environ, VMEP_LIBRARY=lib)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([py, "-c", code], env=env, capture_output=True,
                         text=True, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(str(venv)), out.stdout
    assert os.path.realpath(out.stdout.split()[1]) == os.path.realpath(lib)
    # A library that does not load: False, never an exception.
    env["VMEP_LIBRARY"] = str(tmp_path / "absent.so")
    out = subprocess.run(
        [py, "-c", "import vmep; print(vmep.library_available())"], env=env,
        capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "False", out.stdout + out.stderr
