"""How the three services read their settings: environment variables with a prefix, flags on top.

The extender (``RTDRA_EXTENDER_``), the webhook (``RTDRA_WEBHOOK_``) and the
agent (``RTDRA_AGENT_``) read their environment through :class:`Env`, so that
a value means the same everywhere:

- an unset or blank variable is the default;
- a boolean is ``true``/``false``, ``1``/``0``, ``yes``/``no`` or ``on``/``off``
  in any case - anything else is an error, never a silent ``True`` or ``False``;
- numbers are checked (and bounded) where they are read;
- every bad value is a :class:`ConfigError` that names the variable and the value.

A flag given on the command line wins over its variable: flags are parsed
with the variable's value as their default, or passed as ``overrides``
(``None``: not given) to :func:`dataclass_from_env`. :class:`Listen` holds
the settings both HTTP services give gunicorn (``rtdra.serve``), read by the
same rules. Nothing here reads a file or knows a service; it only turns text
into typed values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

T = TypeVar("T")

TRUE: Final = ("1", "true", "yes", "on")
FALSE: Final = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting has a value the service cannot use; the message names the setting."""


def parse_bool(text: str) -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` (any case); else ``ValueError``."""
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError("is not a boolean (use true or false)")


class Env:
    """The variables of one service: ``<prefix><NAME>``, typed on reading."""

    def __init__(self, prefix: str, environ: Mapping[str, str] | None = None) -> None:
        self.prefix = prefix
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def variable(self, name: str) -> str:
        return self.prefix + name

    def raw(self, name: str) -> str | None:
        """The variable's text, stripped; ``None`` when unset or blank."""
        value = self.environ.get(self.variable(name))
        return value.strip() if value is not None and value.strip() else None

    def parsed(self, name: str, parse: Callable[[str], T], default: T) -> T:
        """``parse(text)``, or ``default`` when unset; a ``ValueError`` becomes a :class:`ConfigError` naming it."""
        text = self.raw(name)
        if text is None:
            return default
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise ConfigError(f"{self.variable(name)}={text!r}: {err}") from None

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.parsed(name, str, default)

    def flag(self, name: str, default: bool) -> bool:
        return self.parsed(name, parse_bool, default)

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        return self.parsed(name, lambda text: _integer(text, minimum), default)

    def number(self, name: str, default: float, *, positive: bool = False) -> float:
        return self.parsed(name, lambda text: _number(text, positive), default)


def _integer(text: str, minimum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}")
    return value


def _number(text: str, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if positive and not value > 0:
        raise ValueError("must be positive")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type and :meth:`Env.parsed` parser: a whole number of at least 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An ``argparse`` type and :meth:`Env.parsed` parser: a whole number of at least 0."""
    return _integer(text, 0)


def dataclass_from_env(cls: type[T], env: Env, overrides: Mapping[str, Any] | None = None) -> T:
    """``cls`` (a dataclass) from ``env`` - a variable per field, ``FIELD_NAME`` upper-cased (or the field's
    ``metadata["env"]``) - then ``overrides``.

    A field's annotation decides how its text is read: ``bool`` by
    :func:`parse_bool`, ``int`` and ``float`` as numbers, ``str`` as is, a
    ``Literal`` as one of its values; ``X | None`` as ``X``. Overrides that are
    ``None`` (a flag not given) are ignored.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        name = f.metadata.get("env", f.name.upper())
        if env.raw(name) is not None:
            values[f.name] = env.parsed(name, _parser(hints[f.name]), None)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**values)


def _parser(annotation: Any) -> Callable[[str], Any]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    if union and len(args) == 1:
        return _parser(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return lambda text: _choice(text, args)
    if annotation is bool:
        return parse_bool
    if annotation is int:
        return _integer
    if annotation is float:
        return _number
    if annotation is str:
        return str
    raise TypeError(f"no rule reads a setting of type {annotation!r} from the environment")


def _choice(text: str, choices: list[Any]) -> Any:
    if text not in choices:
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    return text


@dataclass(frozen=True)
class Listen:
    """How an HTTP service's gunicorn listens and runs (``rtdra.serve.gunicorn_options``).

    The extender's and the webhook's settings extend it, each with its own defaults;
    the checks here are what gunicorn needs of any of them.
    """

    #: ``HOST:PORT`` gunicorn listens on.
    bind: str = "0.0.0.0:8080"
    #: gunicorn workers (processes) and threads per worker.
    workers: int = 1
    threads: int = 4
    #: gunicorn worker timeout, seconds.
    timeout: int = 30
    log_level: str = "info"
    #: Log every request to stderr.
    access_log: bool = False
    #: TLS: serve HTTPS with this certificate and key (PEM files).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: TLS: require a client certificate signed by this CA.
    client_ca_file: str = ""

    def __post_init__(self) -> None:
        if (self.tls_cert_file == "") != (self.tls_key_file == ""):
            raise ConfigError("TLS needs both a certificate and a key file")
        if self.client_ca_file and not self.tls_cert_file:
            raise ConfigError("checking client certificates needs HTTPS (a certificate and key)")
        if self.workers < 1 or self.threads < 1 or self.timeout < 1:
            raise ConfigError("workers, threads and timeout must be at least 1")
        if ":" not in self.bind:
            raise ConfigError(f"bind must be HOST:PORT, got {self.bind!r}")

    @property
    def https(self) -> bool:
        return bool(self.tls_cert_file)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line, ``<prog>: <message>``, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def fail(prog: str, message: str) -> NoReturn:
    """A start-up failure: one line on stderr, exit status 2."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)
