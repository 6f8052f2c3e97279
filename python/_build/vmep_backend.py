"""
A PEP 517 build backend for the pure-Python vmep package, so that
`pip install ./python` needs nothing from a package index: it zips
vmep/*.py with the dist-info files a wheel must have (PEP 427). Wheels
only; editable installs point a .pth file at this folder (PEP 660).
"""
import base64
import hashlib
import os
import zipfile

NAME, VERSION = "vmep", "0.5.0"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST_INFO = f"{NAME}-{VERSION}.dist-info"
TAG = "py3-none-any"


def _metadata():
    return (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
            "Summary: Low-latency MoE dispatch/combine over CUDA VMM memory, "
            "call-compatible with DeepEP's and NIXL EP's Buffer\n"
            "Requires-Python: >=3.8\n")


def _wheel_file():
    return (f"Wheel-Version: 1.0\nGenerator: vmep_backend\n"
            f"Root-Is-Purelib: true\nTag: {TAG}\n")


def _write(wheel_directory, files):
    path = os.path.join(wheel_directory, f"{NAME}-{VERSION}-{TAG}.whl")
    records = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files:
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(
                hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")
        records.append(f"{DIST_INFO}/RECORD,,")
        zf.writestr(f"{DIST_INFO}/RECORD", "\n".join(records) + "\n")
    return os.path.basename(path)


def _dist_info():
    return [(f"{DIST_INFO}/METADATA", _metadata().encode()),
            (f"{DIST_INFO}/WHEEL", _wheel_file().encode()),
            (f"{DIST_INFO}/top_level.txt", f"{NAME}\n".encode())]


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None,
                metadata_directory=None):
    package = os.path.join(HERE, NAME)
    files = []
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                files.append((f"{NAME}/{name}", f.read()))
    return _write(wheel_directory, files + _dist_info())


def build_editable(wheel_directory, config_settings=None,
                   metadata_directory=None):
    pth = (HERE + "\n").encode()
    return _write(wheel_directory, [(f"{NAME}.pth", pth)] + _dist_info())
