"""Run the handlers in this process, as Lambda would: a context object and the module by path."""

from __future__ import annotations

import importlib.util
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[3]


class LocalContext:
    """The LambdaContext attributes the handlers and Powertools use."""

    def __init__(self, function_name: str, timeout_seconds: float = 900.0) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        )
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


_loaded: dict[str, ModuleType] = {}


def load_handler(name: str, repo: Path = REPO, fresh: bool = False) -> ModuleType:
    """functions/<name>/app.py as a module (settings are read from the environment on load);
    fresh=True loads it anew, as a cold start would."""
    if fresh or name not in _loaded:
        path = repo / "functions" / name / "app.py"
        spec = importlib.util.spec_from_file_location(f"promptrun_fn_{name}", path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def invoke(name: str, event: dict[str, Any], timeout_seconds: float = 900.0) -> Any:
    module = load_handler(name)
    return module.lambda_handler(event, LocalContext(f"promptrun-{name}", timeout_seconds))
