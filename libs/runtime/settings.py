"""A setting is declared once, as a field of a frozen dataclass, and everything else follows from it.

    @dataclass(frozen=True)
    class OrdersSettings:
        orders_file: Path = setting(DEFAULT_ORDERS, "orders CSV", parse=user_path)
        max_orders: int = setting(1000, "orders kept in memory", check=between(1, 1_000_000))

`add_settings(parser, OrdersSettings, "ORDER_HISTORY")` adds the flags --orders-file and --max-orders, each
falling back to its environment variable (ORDER_HISTORY_ORDERS_FILE, ORDER_HISTORY_MAX_ORDERS: the keys a
Kubernetes ConfigMap sets), with `--help` naming the variable and the default.
`read_settings(CatalogSettings, args)` checks every value and raises ConfigError naming each flag that
fails and why, before the process binds a port. Adding a setting is one field and its use.

A field whose default is itself a settings class contributes its settings under their own names
(libs/runtime/web.py's HttpConfig.limits); a field declared without `setting` is not a flag (it is
derived from others, like ServerConfig.tls).

Why not a library: pydantic-settings does flags, variables and checks from one declaration, but brings
pydantic-core into every image and slows every start (bench/RESULTS.md, "Figures behind the code");
ConfigArgParse adds variables to argparse but no checks. What is left is this module, on argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

TRUE_WORDS = {"1", "true", "yes", "on"}


class ConfigError(ValueError):
    """One or more configuration values are invalid; the message lists each."""


@dataclass(frozen=True)
class Check:
    """A rule a value must follow, and how the error message says it."""

    ok: Callable[[Any], bool]
    rule: str


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def between(low: float, high: float, unit: str = "") -> Check:
    if unit:
        rule = f"must be from {_number(low)} to {_number(high)} {unit}"
    else:
        rule = f"must be between {_number(low)} and {_number(high)}"
    return Check(lambda value: low <= value <= high, rule)


def at_least(low: float, unit: str = "") -> Check:
    rule = "must be 0 or more" if low == 0 else f"must be at least {_number(low)} {unit}".strip()
    return Check(lambda value: value >= low, rule)


def above(low: float, high: float | None = None, unit: str = "") -> Check:
    """More than `low` (a timeout of 0 means nothing), at most `high` if given."""
    if high is None:
        return Check(lambda value: value > low, "must be positive" if low == 0 else f"must be more than {_number(low)}")
    rule = f"must be more than {_number(low)} and at most {_number(high)} {unit}".strip()
    return Check(lambda value: low < value <= high, rule)


PORT = between(0, 65535)


@dataclass(frozen=True)
class Setting:
    """What `setting` attaches to a dataclass field."""

    help: str
    check: Check | None
    choices: Collection[str] | None
    parse: Callable[[str], Any] | None
    repeatable: bool


def setting(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    choices: Collection[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    repeatable: bool = False,
) -> Any:
    """A dataclass field that is also a flag. The flag's type is the default's (int, float, str; a bool is
    --name/--no-name); `parse` turns the text into the value instead, raising ValueError with a message
    (e.g. --processes 'auto'). `check` is applied to the value, `choices` restricts a string. A `repeatable`
    flag may be given several times; `parse` gets its values (and the variable's) joined by ';'."""
    metadata = {"setting": Setting(help, check, choices, parse, repeatable)}
    if default.__class__.__hash__ is None:  # dataclasses refuse an unhashable default (a read-only mapping too)
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def settings_group(cls: type) -> Any:
    """A field holding another settings class, whose settings become flags of their own names."""
    return dataclasses.field(default_factory=cls, metadata={"group": cls})


def env_name(prefix: str, flag: str) -> str:
    """`--tls-cert` of `SHOP` → SHOP_TLS_CERT; a flag already named after the prefix keeps its name:
    `--order-history-addr` of `ORDER_HISTORY` → ORDER_HISTORY_ADDR."""
    name = flag.lstrip("-").upper().replace("-", "_")
    return name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"


def add_flag(parser: argparse.ArgumentParser, prefix: str, flag: str, default: Any, help: str, **kwargs: Any) -> None:
    """Adds `flag` whose default comes from its environment variable, then `default`."""
    env = env_name(prefix, flag)
    if kwargs.get("action") in ("store_true", argparse.BooleanOptionalAction):
        value: Any = os.environ.get(env, str(default)).strip().lower() in TRUE_WORDS
    else:
        value = os.environ.get(env, default)  # a string from the environment is parsed by `type`
    # argparse %-formats help texts: a literal % (in the text or a default) must reach it as %%.
    text = f"{help} (env {env}; default: {default})".replace("%", "%%")
    parser.add_argument(flag, default=value, help=text, **kwargs)


def _settings(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    for each in dataclasses.fields(cls):
        if "group" in each.metadata:
            yield from _settings(each.metadata["group"])
        elif "setting" in each.metadata:
            yield each, each.metadata["setting"]


def _default(each: dataclasses.Field[Any]) -> Any:
    if each.default is dataclasses.MISSING:
        return each.default_factory()  # type: ignore[operator]  # a factory, when there is no default
    return each.default


def flag_of(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def add_settings(
    parser: argparse.ArgumentParser, cls: type, prefix: str, defaults: Mapping[str, Any] | None = None
) -> None:
    """A flag for every setting of `cls`; `defaults` replaces some of the declared defaults (a service's port)."""
    for each, spec in _settings(cls):
        default = (defaults or {}).get(each.name, _default(each))
        flag, kwargs = flag_of(each.name), dict[str, Any]()
        if spec.repeatable:
            env = env_name(prefix, flag)
            given = [os.environ[env]] if os.environ.get(env) else []
            parser.add_argument(flag, action="append", default=given, help=f"{spec.help} (env {env}; ';'-separated)")
            continue
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.choices is not None:
            kwargs["choices"] = spec.choices
        elif spec.parse is None and isinstance(default, int | float):
            kwargs["type"] = type(default)
        add_flag(parser, prefix, flag, default, spec.help, **kwargs)


def read_settings(cls: type, args: argparse.Namespace, problems: list[str] | None = None) -> Any:
    """An instance of `cls` from the parsed flags. Every failed check is appended to `problems` if given
    (the caller adds its own and raises), else raised at once as one ConfigError."""
    found: list[str] = [] if problems is None else problems
    values = {}
    for each, spec in _settings(cls):
        value = getattr(args, each.name)
        if spec.parse is not None:
            try:
                value = spec.parse(";".join(value) if spec.repeatable else str(value))
            except ValueError as error:
                found.append(f"{flag_of(each.name)} {error}")
                continue
        if spec.choices is not None and value not in spec.choices:
            found.append(f"{flag_of(each.name)} must be one of {', '.join(spec.choices)}, got {value}")
        elif spec.check is not None and not spec.check.ok(value):
            found.append(f"{flag_of(each.name)} {spec.check.rule}, got {value}")
        values[each.name] = value
    if problems is None and found:
        raise ConfigError("; ".join(found))
    return _build(cls, values)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    own = {}
    for each in dataclasses.fields(cls):
        if "group" in each.metadata:
            own[each.name] = _build(each.metadata["group"], values)
        elif each.name in values:
            own[each.name] = values[each.name]
    return cls(**own)
