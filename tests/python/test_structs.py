"""The binding against include/vmep.h: a C program built with the header
prints each mirrored struct's size and each field's offset and size, which
must equal ctypes'; every C field is mirrored, in order (max_ranks of
vmep_ep_config included); every bound function's ctypes prototype matches
its declaration; the whole elastic and high-throughput APIs are bound."""
import ctypes
import os
import re
import shutil
import subprocess
from ctypes import (POINTER, c_char_p, c_int, c_int32, c_size_t, c_uint,
                    c_uint64, c_void_p)

import pytest

from vmep import _lib, errors


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


def c_fields(root, struct):
    """The field names of `typedef struct NAME {...} NAME;` in vmep.h, a
    declaration of several (`const void *bias0, *bias1;`) included."""
    header = open(os.path.join(root, "include", "vmep.h")).read()
    start = header.index(f"typedef struct {struct} {{")
    body = header[header.index("{", start) + 1:]
    body = re.sub(r"/\*.*?\*/", "", body[:body.index(f"}} {struct};")],
                  flags=re.S)
    names = []
    for declaration in body.split(";")[:-1]:
        for declarator in declaration.split(","):
            names.append(re.search(r"(\w+)(?:\[[^]]*\])?\s*$",
                                   declarator).group(1))
    return names


def test_every_c_field_is_mirrored_in_order(root):
    for cname, cls in _lib.STRUCTS.items():
        assert [f for f, _ in all_fields(cls)] == c_fields(root, cname), cname
    # the elastic capacity, appended last (Buffer(max_num_ranks=...))
    assert c_fields(root, "vmep_ep_config")[-1] == "max_ranks"


def c_prototypes(root):
    """{name: (return type, [parameter types])} of every VMEP_API function
    in vmep.h, types with their names and extra spaces removed."""
    header = re.sub(r"/\*.*?\*/", "", open(
        os.path.join(root, "include", "vmep.h")).read(), flags=re.S)
    found = {}
    for ret, args in re.findall(r"VMEP_API\s+([^;(]*?)\s*\(([^;]*?)\)\s*;",
                                header):
        ret, name = re.match(r"(.*?)(\w+)$", ret.strip(), re.S).groups()
        params = []
        for a in " ".join(args.split()).split(","):
            a = a.strip()
            if a == "void":
                continue
            a = re.sub(r"\w+$", "", a).strip()  # the parameter's name
            params.append(re.sub(r"\s*\*", "*", a))
        found[name] = (re.sub(r"\s*\*", "*", ret.strip()), params)
    return found


# C type -> the ctypes the binding may declare for it.
_OPAQUE = ("vmep_group", "vmep_ep")


def allowed(ctype):
    bare = ctype.replace("const ", "")
    simple = {
        "void": [None], "int": [c_int], "vmep_status": [c_int],
        "size_t": [c_size_t], "size_t*": [POINTER(c_size_t)],
        "char*": [c_char_p], "void*": [c_void_p],
        "int*": [POINTER(c_int)],
        "int32_t*": [POINTER(c_int32), c_void_p],  # host array / device
        "int64_t*": [c_void_p], "uint8_t*": [c_void_p],  # device arrays
        "unsigned*": [POINTER(c_uint)], "uint64_t*": [POINTER(c_uint64)],
        "void**": [POINTER(c_void_p)],
        "vmep_allgather_fn": [_lib.ALLGATHER_FN],
        "vmep_barrier_fn": [_lib.BARRIER_FN],
    }
    if bare in simple:
        return simple[bare]
    if bare.endswith("**") and bare[:-2] in _OPAQUE:
        return [POINTER(c_void_p)]
    if bare.endswith("*") and bare[:-1] in _OPAQUE:
        return [c_void_p]
    if bare.endswith("*") and bare[:-1] in _lib.STRUCTS:
        # a struct: by pointer to its mirror, or by address
        return [POINTER(_lib.STRUCTS[bare[:-1]]), c_void_p]
    raise AssertionError(f"no ctypes mapping for C type {ctype!r}")


def test_prototypes_match_the_header(root):
    c = c_prototypes(root)
    for name, (restype, argtypes) in _lib._PROTOTYPES.items():
        assert name in c, f"{name} is not declared in vmep.h"
        ret, params = c[name]
        assert restype in allowed(ret), f"{name} returns {ret}"
        assert len(argtypes) == len(params), \
            f"{name}: {len(argtypes)} ctypes arguments, C has {params}"
        for i, (mine, theirs) in enumerate(zip(argtypes, params)):
            assert mine in allowed(theirs), \
                f"{name} argument {i}: ctypes {mine}, C {theirs}"


def test_the_elastic_api_is_bound(root):
    header = open(os.path.join(root, "include", "vmep.h")).read()
    section = header[header.index("Masks and membership"):]
    section = section[:section.index("Configuration: every environment")]
    names = set(re.findall(r"VMEP_API[^;(]*?(\w+)\s*\(", section))
    names.add("vmep_group_join")
    assert names == set(_lib._ELASTIC_PROTOTYPES)
    assert names <= set(_lib._PROTOTYPES)


def test_the_package_versions_agree(root):
    """pyproject.toml, the wheel backend and the loader name one version."""
    found = {}
    for path, pattern in (
            ("python/pyproject.toml", r'^version = "([0-9.]+)"'),
            ("python/_build/vmep_backend.py",
             r'^NAME, VERSION = "vmep", "([0-9.]+)"')):
        text = open(os.path.join(root, path)).read()
        found[path] = re.search(pattern, text, re.M).group(1)
    assert set(found.values()) == {_lib.VERSION}, found


def test_the_high_throughput_api_is_bound(root):
    header = open(os.path.join(root, "include", "vmep.h")).read()
    section = header[header.index("High-throughput (\"normal\")"):]
    section = section[:section.index("Masks and membership")]
    names = set(re.findall(r"VMEP_API[^;(]*?(\w+)\s*\(", section))
    assert names == set(_lib._HT_PROTOTYPES)
    assert names <= set(_lib._PROTOTYPES)


def test_constants_match_the_header(root):
    header = open(os.path.join(root, "include", "vmep.h")).read()
    for name, value in [("VMEP_EP_SEND", _lib.EP_SEND),
                        ("VMEP_EP_RECV", _lib.EP_RECV),
                        ("VMEP_EP_SEND_RECV", _lib.EP_SEND_RECV),
                        ("VMEP_EP_SCALES_ROW_MAJOR", _lib.SCALES_ROW_MAJOR),
                        ("VMEP_EP_SCALES_COL_MAJOR", _lib.SCALES_COL_MAJOR),
                        ("VMEP_EP_SCALES_UE8M0", _lib.SCALES_UE8M0)]:
        assert f"#define {name} {value}\n" in header, name
    for name, value in [("VMEP_EP_ERR_BAD_EXPERT", _lib.EP_ERR_BAD_EXPERT),
                        ("VMEP_EP_ERR_TIMEOUT", _lib.EP_ERR_TIMEOUT),
                        ("VMEP_EP_ERR_OVERFLOW", _lib.EP_ERR_OVERFLOW)]:
        assert re.search(rf"#define {name}\s+(\\\s*)?{value}u\b", header), \
            name


def test_status_table_matches_the_header(root):
    """errors.STATUSES, the package's one list, is the header's list (in
    order; the header may have appended codes the table lacks yet)."""
    header = open(os.path.join(root, "include", "vmep.h")).read()
    c = [(n, int(v)) for n, v in re.findall(r"X\((\w+), (-?\d+),", header)]
    assert c[:len(errors.STATUSES)] == list(errors.STATUSES)
    for name, value in errors.STATUSES:
        assert getattr(_lib, name) == value == getattr(errors, name)


def test_status_names_come_from_the_library(lib):
    """The library names every code of the table as the table does, and
    names codes the table lacks itself (error_from_status uses it)."""
    for name, value in errors.STATUSES:
        assert lib.status_name(value) == "VMEP_" + name
    assert lib.status_name(-1000) == "VMEP_UNKNOWN_STATUS"
    e = errors.error_from_status(-1000, "", "f", lib.status_name(-1000))
    assert e.status_name == "VMEP_UNKNOWN_STATUS"


def test_mirrors_carry_their_size():
    """struct_size, first in every struct a caller fills in, is the
    mirror's own size; keywords set fields."""
    for cls in (_lib.EpConfig, _lib.DispatchArgs, _lib.CombineArgs,
                _lib.HtDispatchArgs, _lib.HtCombineArgs):
        assert cls._fields_[0] == ("struct_size", c_size_t), cls
        assert cls().struct_size == ctypes.sizeof(cls)
    assert _lib.DispatchArgs(num_tokens=5, scale_layout=2).num_tokens == 5
    assert _lib.EpConfig(max_topk=4).max_topk == 4


def test_config_defaults_are_config_init_s(lib):
    """EpConfig() holds what vmep_ep_config_init writes (the package does
    not call it: a newer library would write a larger struct)."""
    room = ctypes.create_string_buffer(4096)  # room for a newer struct too
    lib.vmep_ep_config_init(ctypes.addressof(room))
    c = _lib.EpConfig.from_buffer(room)
    mine = _lib.EpConfig()
    for field, _ in _lib.EpConfig._fields_:
        assert getattr(mine, field) == getattr(c, field), field


@pytest.mark.parametrize("init,cls", [
    ("vmep_ep_ht_dispatch_args_init", _lib.HtDispatchArgs),
    ("vmep_ep_ht_combine_args_init", _lib.HtCombineArgs)])
def test_ht_args_defaults_are_init_s(lib, init, cls):
    """HtDispatchArgs() / HtCombineArgs() hold what the C _init writes
    (every pointer NULL, every number 0, struct_size the mirror's)."""
    room = ctypes.create_string_buffer(4096)
    getattr(lib, init)(ctypes.addressof(room))
    c = cls.from_buffer(room)
    mine = cls()
    for field, _ in cls._fields_:
        assert getattr(mine, field) == getattr(c, field), field


def test_struct_size_is_checked_by_the_library(lib):
    cfg = _lib.EpConfig(num_experts=8, hidden=7168, max_tokens_per_rank=128)
    out = ctypes.c_size_t()
    assert lib.vmep_ep_buffer_bytes(ctypes.addressof(cfg), 8,
                                    ctypes.byref(out)) == _lib.OK
    cfg.struct_size = 0
    assert lib.vmep_ep_buffer_bytes(ctypes.addressof(cfg), 8,
                                    ctypes.byref(out)) == _lib.ERR_INVALID_ARG
    assert "vmep_ep_config.struct_size = 0" in lib.last_error()


def test_version_rule():
    assert _lib.MIRRORED == (0, 5)
    assert _lib.serves("0.5.0") and _lib.serves("0.6.1")
    assert not _lib.serves("0.3.9") and not _lib.serves("0.2.9") and not _lib.serves("1.3.0")
    assert not _lib.serves("") and not _lib.serves("a.b")
