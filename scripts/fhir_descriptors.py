"""Extracts the FileDescriptorProtos embedded in Google's generated FHIR R4 Python modules.

Each `*_pb2.py` module of the `google-fhir-r4`, `google-fhir-core` and `protobuf` wheels
passes its file's serialized FileDescriptorProto to `AddSerializedFile(b'...')`. This reads
those byte literals with `ast` (nothing from the wheels is imported or executed), orders the
files so that every file follows its imports, and writes one `google.protobuf.FileDescriptorSet`.
The protos themselves are used as Google published them: nothing is edited.

Usage: python3 fhir_descriptors.py OUT.pb WHEEL...
"""

import ast
import sys
import zipfile

# Which generated modules to read, by path prefix inside the wheels: the R4 core resources,
# datatypes, codes, value sets and extensions; the FHIR annotations; the well-known types.
PREFIXES = (
    "google/fhir/r4/proto/core/",
    "google/fhir/core/proto/annotations_pb2.py",
    "google/protobuf/any_pb2.py",
    "google/protobuf/descriptor_pb2.py",
)


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def name_and_deps(fdp):
    """Field 1 (name) and the repeated field 3 (dependency) of a FileDescriptorProto."""
    name, deps, i = None, [], 0
    while i < len(fdp):
        key, i = read_varint(fdp, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(fdp, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = read_varint(fdp, i)
            value = fdp[i : i + n]
            i += n
            if field == 1:
                name = value.decode()
            elif field == 3:
                deps.append(value.decode())
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return name, deps


def serialized_files(source):
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            yield node.args[0].value


def main(out, wheels):
    files = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for member in sorted(z.namelist()):
                if not member.endswith("_pb2.py") or member.endswith("_test_pb2.py"):
                    continue
                if not member.startswith(PREFIXES):
                    continue
                for fdp in serialized_files(z.read(member).decode("utf-8")):
                    name, deps = name_and_deps(fdp)
                    files[name] = (fdp, deps)
    ordered, seen = [], set()

    def visit(name, stack=()):
        if name in seen:
            return
        if name not in files:
            raise SystemExit(f"{name} is imported (by {stack[-1]}) but no wheel has it")
        for dep in files[name][1]:
            visit(dep, stack + (name,))
        seen.add(name)
        ordered.append(name)

    for name in sorted(files):
        visit(name)
    with open(out, "wb") as f:
        for name in ordered:
            fdp = files[name][0]
            f.write(b"\x0a" + varint(len(fdp)) + fdp)
    print(f"{out}: {len(ordered)} files", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
