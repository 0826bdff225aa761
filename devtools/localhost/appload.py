"""Load a Python v2 function app and invoke its functions the way the Python worker does.

Everything the runner serves comes from the app's own registrations (``app.get_functions()`` and
each function's ``get_function_json()``): names, trigger and output bindings, routes, queue names
and schedules. Nothing about the app is repeated here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister

log = logging.getLogger("devtools.localhost.runner")

SUPPORTED_TRIGGERS = ("httpTrigger", "queueTrigger", "timerTrigger")
SUPPORTED_OUTPUTS = ("http", "queue")


class AppLoadError(RuntimeError):
    """The function app could not be imported or holds no FunctionApp."""


@dataclass
class LoadedFunction:
    name: str
    trigger: dict[str, Any]
    outputs: list[dict[str, Any]]
    user_function: Callable[..., Any]
    parameters: dict[str, inspect.Parameter]
    # One invocation at a time for timers: the host runs a timer function as a singleton.
    singleton: threading.Lock = field(default_factory=threading.Lock)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def trigger_name(self) -> str:
        return str(self.trigger["name"])

    def annotation_of_trigger(self) -> Any:
        parameter = self.parameters.get(self.trigger_name)
        return None if parameter is None else parameter.annotation


class LocalOut(func.Out[Any]):
    """The value a function sets on a named output binding."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class LocalContext(func.Context):
    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


@dataclass
class Invocation:
    succeeded: bool
    result: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


def import_app(app_dir: Path, script_file: str = "function_app.py") -> FunctionRegister:
    """Import ``script_file`` from ``app_dir`` (made the working directory, as on the host)."""
    script = app_dir / script_file
    if not script.exists():
        raise AppLoadError(f"{script} does not exist")
    os.chdir(app_dir)
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module_name = script.stem
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    apps = [value for value in vars(module).values() if isinstance(value, FunctionRegister)]
    if len(apps) != 1:
        raise AppLoadError(f"{script} must define exactly one FunctionApp instance, found {len(apps)}")
    return apps[0]


def load_functions(app: FunctionRegister, settings: dict[str, str]) -> list[LoadedFunction]:
    """The functions the runner can serve; others are skipped with a warning naming them."""
    loaded: list[LoadedFunction] = []
    for function in app.get_functions():
        name = function.get_function_name()
        if settings.get(f"AzureWebJobs.{name}.Disabled", "").lower() in ("true", "1"):
            log.info("function %s is disabled by AzureWebJobs.%s.Disabled", name, name)
            continue
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        inputs = [b for b in bindings if b not in triggers and str(b.get("direction", "")).upper() == "IN"]
        outputs = [b for b in bindings if str(b.get("direction", "")).upper() == "OUT"]
        problem = None
        if len(triggers) != 1 or triggers[0]["type"] not in SUPPORTED_TRIGGERS:
            problem = f"trigger {[b.get('type') for b in triggers]} is not one of {', '.join(SUPPORTED_TRIGGERS)}"
        elif inputs:
            problem = f"input bindings {[b.get('type') for b in inputs]} are not supported"
        elif any(b.get("type") not in SUPPORTED_OUTPUTS for b in outputs):
            problem = f"output bindings {[b.get('type') for b in outputs]} are not all of {SUPPORTED_OUTPUTS}"
        if problem:
            log.warning("function %s is not served by the local runner (%s); use 'func start' for it", name, problem)
            continue
        user_function = function.get_user_function()
        loaded.append(
            LoadedFunction(
                name=name,
                trigger=triggers[0],
                outputs=outputs,
                user_function=user_function,
                parameters=dict(inspect.signature(user_function).parameters),
            )
        )
    return loaded


def invoke(function: LoadedFunction, trigger_value: Any, reason: str) -> Invocation:
    """Call the user function with its trigger value, named outputs and (if asked) a context."""
    invocation_id = str(uuid.uuid4())
    kwargs: dict[str, Any] = {function.trigger_name: trigger_value}
    outs = {b["name"]: LocalOut() for b in function.outputs if b["name"] != "$return"}
    kwargs.update(outs)
    if "context" in function.parameters and "context" not in kwargs:
        kwargs["context"] = LocalContext(invocation_id, function.name, os.getcwd())
    log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", function.name, reason, invocation_id)
    started = time.monotonic()
    try:
        result = function.user_function(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except Exception as exc:
        elapsed = (time.monotonic() - started) * 1000
        log.error(
            "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s: %s",
            function.name,
            invocation_id,
            elapsed,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return Invocation(False, error=exc)
    elapsed = (time.monotonic() - started) * 1000
    log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", function.name, invocation_id, elapsed)
    values = {name: out.get() for name, out in outs.items()}
    values["$return"] = result
    return Invocation(True, result=result, outputs=values)


async def _await(awaitable: Any) -> Any:
    return await awaitable
