#!/usr/bin/env python
"""Generate the Python stubs of protos/worldserve/v1 into services/worldserve/v1.

The one way stubs are made: grpcio-tools and mypy-protobuf are pinned in pyproject's [dev] extra,
so the output is reproducible. `--check` regenerates into a temporary folder and exits 1 when the
committed stubs differ (tests/test_protos.py runs it).

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # fail on drift
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "services"
PACKAGE = Path("worldserve") / "v1"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev extra

    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    beside = Path(sys.executable).parent / "protoc-gen-mypy_grpc"  # this interpreter's scripts first
    mypy_grpc = str(beside) if beside.exists() else shutil.which("protoc-gen-mypy_grpc")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
    ]
    if mypy_grpc is None:
        raise SystemExit("protoc-gen-mypy_grpc not found: pip install -e '.[dev]' (mypy-protobuf)")
    args += [f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}", f"--mypy_grpc_out={out_root}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in protos]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    pkg = out_root / PACKAGE
    (pkg / "__init__.py").write_text(
        '"""Generated gRPC stubs of worldserve.v1 (scripts/gen_protos.py). Do not edit."""\n'
    )
    return sorted(p for p in pkg.iterdir() if p.suffix in {".py", ".pyi"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when committed stubs differ from the protos")
    ns = ap.parse_args()
    if not ns.check:
        for p in generate(OUT_ROOT):
            print(p.relative_to(ROOT))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed_dir = OUT_ROOT / PACKAGE
        committed = sorted(p for p in committed_dir.iterdir() if p.suffix in {".py", ".pyi"})
        drift = sorted({p.name for p in fresh} ^ {p.name for p in committed})
        drift += [
            p.name
            for p in fresh
            if (committed_dir / p.name).exists() and not filecmp.cmp(p, committed_dir / p.name, shallow=False)
        ]
    if drift:
        print("generated stubs drifted from protos/: " + ", ".join(sorted(set(drift))), file=sys.stderr)
        print("run: python scripts/gen_protos.py", file=sys.stderr)
        return 1
    print("stubs match protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
