"""Cold start from the layer as `sam build` makes it (shared/Makefile's build-SharedLayer): a bare
Python 3.13 (no site-packages), the layer and the runtime's own boto3 on the path, and no
bytecode written, as on Lambda's read-only /opt. The venv figure (run.py's cold_start) reuses
the bytecode Python caches there; this one shows what the layer ships."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The Lambda runtime's own packages (shared/requirements.txt leaves them out of the layer).
RUNTIME_OWN = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3")


def build_layer(into: Path) -> Path:
    subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO / "shared"),
            "build-SharedLayer",
            f"ARTIFACTS_DIR={into}",
            f"PYTHON={sys.executable}",
        ],
        check=True,
        capture_output=True,
    )
    return into / "python"


def runtime_dir(into: Path) -> Path:
    """The venv's copies of the runtime's own packages, linked into a directory of their own."""
    site = Path(sysconfig.get_paths()["purelib"])
    into.mkdir()
    for name in RUNTIME_OWN:
        (into / name).symlink_to(site / name)
    return into


def layer_cold_start(inits: dict[str, str], runs: int = 3) -> None:
    """`inits`: per function, what its init does after `import app` (run.py's _INIT)."""
    print("cold start from the built layer (bare python -S, no bytecode written, as on /opt)")
    base_python = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            layer = build_layer(Path(tmp) / "layer")
        except subprocess.CalledProcessError as exc:
            print(f"  the layer did not build: {exc.stderr.decode()[-500:]}")
            return
        runtime = runtime_dir(Path(tmp) / "runtime")
        for name, init in inits.items():
            code = (
                "import time; t, c = time.perf_counter(), time.process_time(); import app; "
                f"{init}; print(round((time.perf_counter() - t) * 1000), "
                "round((time.process_time() - c) * 1000))"
            )
            env = {
                "PATH": "/usr/bin:/bin",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONPATH": os.pathsep.join([str(layer), str(runtime), "."]),
                "DATABASE_URL": "postgresql+pg8000://u:p@127.0.0.1:1/x",
                "JOBS_QUEUE_URL": "http://127.0.0.1:1/000000000000/q",
                "API_TOKEN": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            walls, cpus = [], []
            for _ in range(runs):
                done = subprocess.run(
                    [str(base_python), "-S", "-c", code],
                    cwd=REPO / "functions" / name,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                wall, cpu = done.stdout.split()[-2:]
                walls.append(int(wall))
                cpus.append(int(cpu))
            what = f"{name}: import + init, wall (CPU), median of {runs}"
            figure = f"{statistics.median(walls)} ms ({statistics.median(cpus)} ms)"
            print(f"  {what:<52} {figure:>22}")
            spread = f"{min(walls)} - {max(walls)} ms"
            print(f"  {'    fastest - slowest run, wall':<52} {spread:>22}")
