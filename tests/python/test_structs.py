"""Every ctypes mirror of a C struct against include/vmep.h: a C program
built with the header prints each struct's size and each field's offset
and size, and they must equal ctypes'."""
import ctypes
import os
import shutil
import subprocess

import pytest

from vmep import _lib


def c_layout(root, tmp_path, structs):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "vmep.h"',
             "int main(void) {"]
    for cname, cls in structs.items():
        lines.append(f'  printf("{cname} %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(
                f'  printf("{cname}.{field} %zu %zu\\n", '
                f"offsetof({cname}, {field}), "
                f"sizeof((({cname} *)0)->{field}));")
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-I",
                    os.path.join(root, "include"), str(src), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True,
                         text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def all_fields(cls):
    """_fields_ of cls and its bases, in memory order."""
    fields = []
    for klass in reversed(cls.__mro__):
        fields += list(getattr(klass, "__dict__", {}).get("_fields_", []))
    return fields


def test_struct_layouts_match_the_header(root, tmp_path):
    structs = dict(_lib.STRUCTS)
    header = open(os.path.join(root, "include", "vmep.h")).read()
    config = header[header.index("typedef struct vmep_ep_config"):]
    config = config[:config.index("} vmep_ep_config;")]
    if "max_ranks" in config:  # the elastic field, once the header has it
        structs["vmep_ep_config"] = _lib.EpConfigElastic

    class Flat:  # what c_layout needs: the C field names
        pass

    views = {}
    for cname, cls in structs.items():
        view = type(cname, (Flat,), {})
        view._fields_ = all_fields(cls)
        views[cname] = view
    got = c_layout(root, tmp_path, views)
    for cname, cls in structs.items():
        assert int(got[cname]) == ctypes.sizeof(cls), cname
        for field, _ in all_fields(cls):
            offset, size = map(int, got[f"{cname}.{field}"].split())
            desc = getattr(cls, field)
            assert (offset, size) == (desc.offset, desc.size), \
                f"{cname}.{field}: C {offset}/{size}, ctypes " \
                f"{desc.offset}/{desc.size}"


def test_constants_match_the_header(root):
    header = open(os.path.join(root, "include", "vmep.h")).read()
    for name, value in [("VMEP_EP_SEND", _lib.EP_SEND),
                        ("VMEP_EP_RECV", _lib.EP_RECV),
                        ("VMEP_EP_SEND_RECV", _lib.EP_SEND_RECV),
                        ("VMEP_EP_SCALES_ROW_MAJOR", _lib.SCALES_ROW_MAJOR),
                        ("VMEP_EP_SCALES_COL_MAJOR", _lib.SCALES_COL_MAJOR),
                        ("VMEP_EP_SCALES_UE8M0", _lib.SCALES_UE8M0)]:
        assert f"#define {name} {value}\n" in header, name
    for name, value in [("ERR_INVALID_ARG", -1), ("ERR_TIMEOUT", -5),
                        ("ERR_PEER", -6)]:
        assert f"X({name}, {value}," in header
        assert getattr(_lib, name) == value
