"""Build step of the layer (not shipped in it): the CA bundle's certificates filed one per file
under their subject hash (`<hash>.<n>`, the layout OpenSSL's CApath reads).

Loading the 122-certificate RDS bundle into an SSL context costs 0.1-0.2 s of every cold start
(OpenSSL 3 parses each one); from this directory OpenSSL reads only the issuer a server's chain
names, at the handshake. Regular files, no symlinks (`openssl rehash` makes links, which a zip
may not keep). Without the `openssl` command the directory is not made and the functions load
the bundle as before.

    python ca_index.py BUNDLE.pem OUTPUT_DIR
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def subject_hash(pem: bytes) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash"],
        input=pem,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def build(bundle: Path, out: Path) -> int:
    """Files every certificate of `bundle` into `out` (made afresh); returns how many."""
    certs = _CERT.findall(bundle.read_bytes())
    if not certs:
        raise SystemExit(f"{bundle}: no certificate found")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seen: dict[str, int] = {}
    for pem in certs:
        digest = subject_hash(pem)
        # Two certificates with one subject (a renewed root) get .0 and .1, as rehash does.
        n = seen.get(digest, 0)
        seen[digest] = n + 1
        (out / f"{digest}.{n}").write_bytes(pem.rstrip(b"\n") + b"\n")
    return len(certs)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    if shutil.which("openssl") is None:
        print("ca_index: no openssl command; the layer loads the whole CA bundle", file=sys.stderr)
        return 0
    build(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
