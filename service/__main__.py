"""Command line: ``python -m service`` serves; ``python -m service api-keys``
manages API keys.

    python -m service                                 # run the server
    python -m service api-keys create --tenant acme   # prints the key last
    python -m service api-keys list [--tenant acme]
    python -m service api-keys revoke KEY_ID
    python -m service api-keys limits --tenant acme [--rate 50 --burst 100 --streams 20 | --reset]
    python -m service memory reindex [--all]          # after changing LOOM_EMBEDDING
    python -m service memory export --tenant T --assistant ID --out FILE   # JSON Lines
    python -m service memory import --tenant T --assistant ID --in FILE [--new-ids]
    python -m service error-reasons [--write README.md]  # the table of ErrorInfo reasons
    python -m service jobs list [--state failed] [--tenant T]
    python -m service jobs retry JOB_ID | --all-failed
    python -m service chat [--assistant ID] [--user U] [--thread ID]   # needs loom_client
    python -m service health [--ca CA --cert C --key K]   # exit 0 if this replica is SERVING
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from service import jobs_cli, memory_cli
from service.config import Settings
from service.core.errors import LoomError

if TYPE_CHECKING:
    from service.core.keys import KeyService
from service.telemetry import TelemetryConfig, TelemetryConfigError, configure_logging

__all__ = ["main"]


# Settings read from the openai SDK's variable when the LOOM_ one is unset.
_FALLBACKS = {"LOOM_LLM_BASE_URL": "OPENAI_BASE_URL", "LOOM_LLM_API_KEY": "OPENAI_API_KEY"}


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a settings error is about (fields read through
    an alias, such as OPENAI_BASE_URL, already carry the variable's name)."""
    name = "_".join(str(p) for p in loc).upper()
    if not name.startswith(("LOOM_", "OPENAI_")):
        name = f"LOOM_{name}"
    fallback = _FALLBACKS.get(name)
    if fallback and name not in os.environ and fallback in os.environ:
        return fallback
    return name


def _settings() -> tuple[Settings, TelemetryConfig]:
    """Loom's settings and the OTEL_ variables; every bad value is reported
    at once, then the process exits with status 2."""
    lines: list[str] = []
    settings: Settings | None = None
    telemetry: TelemetryConfig | None = None
    try:
        settings = Settings()
    except ValidationError as exc:
        lines += [f"  {_variable(e['loc'])}: {e['msg']}" for e in exc.errors()]
    try:
        telemetry = TelemetryConfig.from_env()
    except TelemetryConfigError as exc:
        lines += [f"  {name}: {message}" for name, message in exc.problems]
    if settings is None or telemetry is None:
        sys.stderr.write("loom: invalid configuration:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2)
    return settings, telemetry


async def _api_keys(args: argparse.Namespace, settings: Settings) -> int:
    from service.core.keys import KeyService
    from service.database import store_from, unreachable

    store = store_from(settings)
    try:
        await store.ensure_indexes()
        keys = KeyService(store.keys)
        if args.command == "create":
            created = await keys.create(args.tenant)
            print(f"key_id: {created.key.key_id}  tenant: {created.key.tenant}")
            print("the key is shown once; store it now:")
            print(created.secret)
        elif args.command == "limits":
            await _limits(args, keys, settings)
        elif args.command == "list":
            for key in await keys.list_keys(args.tenant):
                state = (
                    f"revoked {key.revoke_time:%Y-%m-%dT%H:%M:%SZ}" if key.revoke_time else "active"
                )
                print(
                    f"{key.key_id}\t{key.tenant}\t{key.prefix}…\t{key.create_time:%Y-%m-%dT%H:%M:%SZ}\t{state}"
                )
        elif not await keys.revoke(args.key_id):
            sys.stderr.write(f"loom: no active key with id {args.key_id!r}\n")
            return 1
        else:
            print(f"revoked {args.key_id}")
        return 0
    except LoomError as exc:
        sys.stderr.write(f"loom: {exc.message}\n")
        return 2
    except PyMongoError as exc:
        sys.stderr.write(unreachable(exc) + "\n")
        return 1
    finally:
        await store.close()


async def _limits(args: argparse.Namespace, keys: KeyService, settings: Settings) -> None:
    """Show a tenant's call limits, after applying the overrides asked for."""
    from service.core.keys import CACHE_SECONDS

    changes = {"rate": args.rate, "burst": args.burst, "streams": args.streams}
    if args.reset or any(v is not None for v in changes.values()):
        overrides = await keys.set_limits(args.tenant, reset=args.reset, **changes)
    else:
        overrides = await keys.limits(args.tenant)
    defaults = {
        "rate": (settings.rate_limit_per_key, "LOOM_RATE_LIMIT_PER_KEY", "calls/s per key"),
        "burst": (settings.rate_limit_burst, "LOOM_RATE_LIMIT_BURST", "calls at once per key"),
        "streams": (settings.max_streams_per_tenant, "LOOM_MAX_STREAMS_PER_TENANT", "streams"),
    }
    print(f"tenant {args.tenant} (0 is unlimited):")
    for name, (default, variable, unit) in defaults.items():
        value = getattr(overrides, name)
        source = "override" if value is not None else f"default, {variable}"
        print(f"  {name:<8}{(default if value is None else value):g} {unit} ({source})")
    print(f"each replica applies a change within {CACHE_SECONDS:g} s, and enforces it on its own")


def _error_reasons(write: str | None) -> int:
    from service.api.reasons import render, scan, update_readme

    table = render(scan())
    if write is None:
        sys.stdout.write(table)
        return 0
    path = Path(write)
    path.write_text(update_readme(path.read_text(), table))
    return 0


def _chat(argv: list[str]) -> int:
    """The chat of the Python client (clients/python), which is a client of
    a running Loom and reads none of the server's settings."""
    try:
        from loom_client.chat import main as chat
    except ImportError:
        sys.stderr.write("loom: the chat needs the Python client: pip install ./clients/python\n")
        return 2
    return chat(argv, prog="python -m service chat")


def _key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("api-keys", help="create, list or revoke API keys")
    key_cmds = keys.add_subparsers(dest="command", required=True)
    create = key_cmds.add_parser("create", help="create a key; it is printed on the last line")
    create.add_argument("--tenant", required=True)
    listing = key_cmds.add_parser("list", help="list keys (never the secrets)")
    listing.add_argument("--tenant")
    revoke = key_cmds.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    limits = key_cmds.add_parser(
        "limits", help="show a tenant's call limits, or override them (0 is unlimited)"
    )
    limits.add_argument("--tenant", required=True)
    limits.add_argument("--rate", type=float, help="calls per second per API key")
    limits.add_argument("--burst", type=int, help="calls an API key may make at once")
    limits.add_argument("--streams", type=int, help="concurrent SendMessage/SubmitToolOutputs")
    limits.add_argument(
        "--reset", action="store_true", help="drop the tenant's overrides (back to the defaults)"
    )


def _health(args: argparse.Namespace, settings: Settings) -> int:
    """The probe, over TLS (with the client certificate, if given) when
    this replica serves TLS."""
    from service.probe import ProbeTls, local_address, probe

    tls = None
    if settings.tls_cert is not None:
        tls = ProbeTls(
            ca=args.ca or settings.probe_ca,
            cert=args.cert or settings.probe_cert,
            key=args.key or settings.probe_key,
            server_name=args.server_name or settings.probe_server_name,
        )
    return probe(local_address(settings.listen), tls=tls)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="group")
    sub.add_parser("serve", help="run the gRPC server (the default)")
    sub.add_parser("chat", help="chat with a running Loom in the terminal (chat --help)")
    health = sub.add_parser(
        "health", help="check this replica's gRPC health (for container probes)"
    )
    # Over TLS when LOOM_TLS_CERT is set; these override the LOOM_PROBE_* variables.
    health.add_argument("--ca", type=Path, help="PEM CA bundle to trust (LOOM_PROBE_CA)")
    health.add_argument("--cert", type=Path, help="PEM client certificate (LOOM_PROBE_CERT)")
    health.add_argument("--key", type=Path, help="its PEM private key (LOOM_PROBE_KEY)")
    health.add_argument(
        "--server-name", help="name Loom's certificate must carry (LOOM_PROBE_SERVER_NAME)"
    )
    _key_commands(sub)
    memory_cli.add_parser(sub)
    reasons = sub.add_parser("error-reasons", help="print every ErrorInfo reason (Markdown)")
    reasons.add_argument("--write", metavar="FILE", help="replace the table between its markers")
    jobs_cli.add_parser(sub)
    return parser


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``LOOM_EVENT_LOOP`` names (None: asyncio's own)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:
        return _chat(argv[1:])
    args = _parser().parse_args(argv)
    if args.group == "error-reasons":  # reads the source only: needs no settings
        return _error_reasons(args.write)

    settings, telemetry_config = _settings()
    configure_logging(settings.log_level, capture_content=telemetry_config.capture_content)
    if args.group == "api-keys":
        return asyncio.run(_api_keys(args, settings))
    if args.group == "memory":
        return memory_cli.main(args, settings)
    if args.group == "jobs":
        return asyncio.run(jobs_cli.run(args, settings))
    if args.group == "health":
        return _health(args, settings)
    from service.run import serve
    from service.telemetry import setup

    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, setup(telemetry_config)))
    except OSError as exc:
        sys.stderr.write(f"loom: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
