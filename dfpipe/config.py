"""Job configuration: one frozen dataclass per job, from YAML plus ``key=value`` overrides.

Fields carry their help text in ``metadata={"help": ...}``; the CLI prints it for ``--help``.
Unknown keys, bad types and bad choices raise :class:`ConfigError` with what to do instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from dfpipe import storage
from dfpipe.storage import Folder, StorageOptions


class ConfigError(ValueError):
    """A configuration the job cannot run with; the message says how to fix it."""


class JobError(RuntimeError):
    """A job that cannot finish for a reason the user can act on (exit code 1, message printed)."""


MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - mirrors argparse
    *,
    rows: bool = False,
    before: Any = MISSING,
    **kwargs,
) -> Any:
    """A config field with help text; no default means required.

    ``rows``: the option changes what the job writes (its rows, or its model). Those options are
    the job's :func:`row_fields`: their hash marks what it wrote (:func:`config_hash`), rows or a
    model made with other values are refused, a model records them as its recipe, and the others
    (where it runs, how many workers, batch sizes) may change between a run and its rerun.
    ``before``: for a row-changing option added later, the value that makes the rows as dfpipe
    made them before the option existed (a config holding it hashes as before; see :func:`added`).
    """
    metadata = {"help": help, "rows": rows} | ({"before": before} if before is not MISSING else {})
    if isinstance(default, dict) and not default:  # a section of options, empty unless given
        return dataclasses.field(default_factory=dict, metadata=metadata, **kwargs)
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults: config objects are frozen")
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def row_fields(*classes) -> tuple[str, ...]:
    """The options of ``classes`` (config or option-group dataclasses) declared with ``rows=True``."""
    names = (f.name for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("rows"))
    return tuple(dict.fromkeys(names))


def added(cls) -> dict[str, Any]:
    """Row-changing options of ``cls`` added after rows were first made, each with its ``before``
    value: what a recorded config or recipe that lacks the option holds."""
    return {f.name: f.metadata["before"] for f in dataclasses.fields(cls) if "before" in f.metadata}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """A group of options a stage takes (its fields made with :func:`option`), checked on creation.

    Each group checks its own fields in ``check()``; a job config made of several groups (by
    inheriting them) runs every group's check. :func:`part` takes one group out of such a config.
    """

    def __post_init__(self) -> None:
        for cls in reversed(type(self).__mro__):
            check = cls.__dict__.get("check")
            if check is not None:
                check(self)


def part(cls: type[Options], config) -> Options:
    """The ``cls`` group of ``config``: the values of its fields, as an instance of ``cls``."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn ``value`` (from YAML or a ``key=value`` string) into ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (inner,) = get_args(tp)[:1]
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(name, inner, v) for v in value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of option: value, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{name}: unsupported config type {tp!r}")


def fields_of(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def build(cls, values: dict[str, Any]):
    """Validate ``values`` against the dataclass ``cls`` and build it."""
    fields = fields_of(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; valid options are: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(name, fields[name].type, v) for name, v in values.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigError(
            f"missing required option(s): {', '.join(missing)} (give them as --{missing[0].replace('_', '-')} "
            f"or {missing[0]}=... or in --config FILE.yaml)"
        )
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parsed = yaml.safe_load(value) if value.strip() else ""
        key = key.strip().replace("-", "_")
        if "." in key:  # section.option=value sets one option of a mapping field
            section, option_name = key.split(".", 1)
            out.setdefault(section, {})[option_name] = parsed
        else:
            out[key] = parsed
    return out


def load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option: value at the top level")
    return data


def to_dict(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_hash(config, keys: typing.Iterable[str]) -> str:
    """A short stable hash of the fields that change a job's output."""
    values, old = to_dict(config), added(type(config))
    # An option added later, at the value that reproduces the rows made before it, hashes as before.
    kept = {k: values[k] for k in sorted(keys) if not (k in old and values[k] == old[k])}
    payload = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def refuse_other_settings(config, keys: typing.Iterable[str], done, config_uri: str) -> None:
    """The one rule of every step that appends to an output (``config.output``): rows made with other
    settings (``config_hash`` values of the ``done`` rows other than this config's) are never mixed
    with new ones. Raises a :class:`ConfigError` (exit 2) naming each option that differs from the
    config the output's ``config_uri`` recorded, and the way out, ``--overwrite``."""
    opts = config.storage_options
    digest = config_hash(config, keys)
    other = set(done.column("config_hash").unique().to_pylist()) - {digest, None}
    if not other:
        return
    previous = storage.read_json(config_uri, opts).get("config") if storage.exists(config_uri, opts) else None
    now = to_dict(config)
    changed = [
        k for k in sorted(keys) if previous is not None and k in previous and previous[k] != now.get(k)
    ]
    named = ", ".join(f"{k} {previous[k]!r} -> {now.get(k)!r}" for k in changed)
    raise ConfigError(
        f"{config.output} holds rows made with other settings ({named or 'config hash ' + sorted(other)[0]}); "
        "pass --overwrite to redo them, or choose another output"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where a job runs and how it reaches object stores; every job config extends this.

    Credentials are never options: they come from the environment or the instance profile.
    """

    s3_endpoint_url: str | None = option(
        None, "S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)"
    )
    s3_region: str | None = option(None, "S3 region (default: the AWS environment)")
    s3_anon: bool = option(False, "anonymous S3 access (public buckets)")
    ray_address: str | None = option(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    verbose: bool = option(
        False, "print Ray's logs and progress blocks here too (by default they go to OUTPUT/logs/)"
    )
    capacity_wait_s: float = option(
        900.0,
        "on a cluster, how long a step may wait for capacity it lost (a dead node's replacement) "
        "before the job fails saying so: a Ray Data step with no progress, training workers that "
        "cannot be placed",
    )

    @property
    def storage_options(self):
        return StorageOptions(self.s3_endpoint_url, self.s3_region, self.s3_anon)

    def folder(self, uri: str):
        """``uri`` as a :class:`dfpipe.storage.Folder` reached with this job's storage options: how a
        job resolves what it reads and writes, once, where it starts."""
        return Folder(uri, self.storage_options)

    def local_paths(self) -> dict[str, str]:
        """The local paths the job reads or writes (``--input``, ``--output``, ``--model``, ...), as
        absolute paths: on a cluster of several machines, every node must see each of them."""
        out = {}
        for name in PATH_FIELDS:
            value = getattr(self, name, None)
            for i, uri in enumerate(value if isinstance(value, tuple | list) else [value]):
                if isinstance(uri, str) and uri and storage.is_local(uri):
                    out[
                        f"--{name}"
                        + (f" #{i + 1}" if isinstance(value, tuple | list) and len(value) > 1 else "")
                    ] = storage.strip_protocol(uri)
        return out


def run_options_of(cfg: RunOptions) -> dict:
    """``cfg``'s :class:`RunOptions` fields (where and how it runs), for the jobs a job runs."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunOptions)}


# The config fields that name storage a job reads or writes (checked on clusters of several machines).
PATH_FIELDS = ("input", "output", "model", "embedder", "embeddings_cache")


RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunOptions))


def help_lines(cls) -> list[str]:
    lines = []
    fields = fields_of(cls)
    # What must be given first, then a job's own options, the shared run options last.
    required = [n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    ordered = required + [n for n in fields if n not in RUN_OPTIONS and n not in required]
    ordered += [n for n in fields if n in RUN_OPTIONS and n not in required]
    for name in ordered:
        f = fields[name]
        if f.default is not MISSING:
            default = f"default: {f.default!r}"
        else:
            default = "default: {}" if f.default_factory is not MISSING else "required"
        lines.append(f"  {name} ({_type_name(f.type)}; {default})\n      {f.metadata.get('help', '')}")
    return lines
