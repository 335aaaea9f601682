import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stubs_match_protos():
    r = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_rpc_and_field_is_commented():
    import re

    for proto in (ROOT / "protos/worldserve/v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            if re.match(r"^(rpc |(optional |repeated )?[\w.<>, ]+ \w+ = \d+;)", s) and not s.startswith("//"):
                prev = lines[i - 1].strip()
                assert prev.startswith("//"), f"{proto.name}:{i + 1} has no comment: {s}"
