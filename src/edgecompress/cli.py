"""The thin command line: parse, load the config, call the library, print.

Errors a user can fix print one line and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Protocol, overload

import typer

from edgecompress._text import printable
from edgecompress.errors import EdgeCompressError, describe_failure

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill, calibrate, quantize, benchmark and bundle a classifier for edge devices.",
)
_state = {"debug": False}

# the pipeline's stage order (edgecompress.pipeline.STAGE_NAMES; a test keeps them equal, the CLI stays light)
STAGES = [
    "data",
    "teacher",
    "budget",
    "search",
    "decide",
    "distill",
    "calibrate",
    "export",
    "benchmark",
    "report",
    "bundles",
]


def _console():
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each step, third-party messages too (else in RUN/run.log).")
    ] = False,
) -> None:
    _state["debug"] = debug
    from edgecompress.console import setup_logging

    # quiet by default: own warnings once each on the console; third-party messages and INFO lines to RUN/run.log
    setup_logging(debug=debug, verbose=verbose, filters=[_escape_record])
    if not debug and not verbose:
        # Progress below WARNING goes to stdout (stderr keeps its one-line error contract): stage start/finish lines
        # always, epoch lines too when there is no terminal for the progress bars (CI, redirected logs).
        progress = logging.StreamHandler(sys.stdout)
        progress.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        progress.addFilter(lambda record: record.levelno < logging.WARNING)
        progress.addFilter(_escape_record)
        names = ["edgecompress.pipeline.context"]
        if not sys.stderr.isatty():
            names += ["edgecompress.distill.trainer", "edgecompress.distill.datafree.runner"]
        else:  # the data-free run's plan (a child of the runner's logger, whose round lines stay off a terminal)
            names.append("edgecompress.distill.datafree.runner.plan")
        progress.set_name("edgecompress-progress")
        for name in names:
            logger = logging.getLogger(name)
            logger.setLevel(logging.INFO)
            logger.handlers = [h for h in logger.handlers if h.get_name() != "edgecompress-progress"] + [progress]


def _escape_record(record: logging.LogRecord) -> bool:
    """Log lines name labels, files and devices from runs and bundles: escape their control characters."""
    record.msg, record.args = printable(record.getMessage()), None
    return True


def _summary(report_paths: dict[str, Path], run_dir: Path) -> None:
    from rich.markup import escape

    out = _console()
    out.print(f"[bold green]done[/]: run directory {escape(printable(run_dir))}")
    for kind, path in report_paths.items():
        out.print(f"  {escape(printable(kind))}: {escape(printable(path))}", highlight=False)
    _headline(report_paths, run_dir)


def _run_log(run_dir: Path) -> None:
    """Everything logged from here on (third-party messages, INFO lines) goes to ``RUN/run.log``."""
    from edgecompress.console import attach_run_log

    attach_run_log(run_dir, debug=bool(_state["debug"]))


def _headline(report_paths: dict[str, Path], run_dir: Path) -> None:
    """The run's verdict last on the console: teacher → shipped artifact per device (when a report was written)."""
    from edgecompress.console import LOG_FILE, print_headline

    if "json" in report_paths:
        sys.stderr.flush()
        print_headline(report_paths["json"], log_file=run_dir / LOG_FILE)


def _echo(text: str) -> None:
    """Print untrusted text (names, labels, paths from a run or bundle) with control characters escaped."""
    for line in text.splitlines() or [""]:
        typer.echo(printable(line))


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/run"),
    until: Annotated[str | None, typer.Option(help=f"Stop after this stage: {', '.join(STAGES)}.")] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Recompute this stage and every later one, even where a finished folder exists."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    trust_factory: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-factory",
            metavar="MODULE",
            help="Allow model factories from MODULE (repeatable); added to the config's trust_factories.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline for CONFIG (finished stages are reused, an interrupted one resumes)."""
    from edgecompress.config import load_config
    from edgecompress.pipeline import run_pipeline

    for option, name in (("--until", until), ("--from", from_)):
        if name is not None and name not in STAGES:
            raise EdgeCompressError(f"{option} {name!r} is not a stage", f"use one of: {', '.join(STAGES)}")
    cfg = load_config(config)
    _run_log(out)
    paths = run_pipeline(cfg, out, until=until, from_=from_, progress=progress, trust_factories=_modules(trust_factory))
    _summary(paths, out)


def _modules(names: list[str] | None) -> list[str]:
    """The --trust-factory modules, checked to be dotted module names."""
    from edgecompress.config import check_trustable

    for name in names or []:
        try:
            check_trustable(name)
        except ValueError as exc:
            raise EdgeCompressError(
                f"--trust-factory: {exc}", "name the module of your own model factory, e.g. mypkg.models"
            ) from None
    return list(names or [])


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="The digits example instead (about a minute).")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Run the Fashion-MNIST example end to end (teacher trained here) and print where the report and bundles are."""
    from edgecompress.config import load_config
    from edgecompress.pipeline import preset_path, run_pipeline

    cfg = load_config(preset_path("digits" if quick else "fashion_mnist"))
    _run_log(out)
    paths = run_pipeline(cfg, out, progress=progress)
    _summary(paths, out)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file."""
    from edgecompress.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Pipeline config (YAML).")],
    trust_factory: Annotated[
        list[str] | None,
        typer.Option("--trust-factory", metavar="MODULE", help="As for `run`: allow model factories from MODULE."),
    ] = None,
) -> None:
    """Validate CONFIG and print it resolved, every default explicit (model factories are imported and checked)."""
    from edgecompress.config import config_factories, dump_config, load_config
    from edgecompress.pipeline.run import check_components

    cfg = load_config(config)
    check_components(cfg)  # imports the config's plugins: the user's own config, like run
    factories = config_factories(cfg)
    if factories:
        from edgecompress.models.build import trust_notes

        for note in trust_notes(factories, [*cfg.trust_factories, *_modules(trust_factory)]):
            _echo(f"# {note}")
    typer.echo(dump_config(cfg))


@app.command()
def bench(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    device: Annotated[list[str] | None, typer.Option("--device", "-d", help="Device profile name or YAML.")] = None,
    trust_factory: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-factory",
            metavar="MODULE",
            help="Allow the run's model factory from MODULE (repeatable). A received run directory is data: without "
            "this flag no code it names is imported.",
        ),
    ] = None,
    profiles_dir: Annotated[
        Path | None,
        typer.Option(help="A directory of your own device profiles; the run's own profiles_dir is never used."),
    ] = None,
) -> None:
    """Benchmark the run's artifacts again on the given devices and rewrite the report."""
    from edgecompress.pipeline import bench_run

    _run_log(run_dir)
    paths = bench_run(
        run_dir, devices=device or ["local"], trust_factories=_modules(trust_factory), profiles_dir=profiles_dir
    )
    _summary(paths, run_dir)


@app.command()
def devices(
    profiles_dir: Annotated[Path | None, typer.Option(help="A directory of your own profile YAML files.")] = None,
) -> None:
    """List the device profiles: built-in ones and those in --profiles-dir."""
    from edgecompress.devices.profiles import list_profiles, load_profile

    extra = [profiles_dir] if profiles_dir else []
    for name in list_profiles(extra):
        profile = load_profile(name, extra)
        _echo(f"{name:20s} {profile.transport:6s} {profile.description}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .zip.")],
    allowed_signers: Annotated[
        Path | None, typer.Option(help="OpenSSH allowed_signers file: also check SHA256SUMS.sig (needs --identity).")
    ] = None,
    identity: Annotated[str | None, typer.Option(help="The signer's identity in --allowed-signers.")] = None,
) -> None:
    """Verify a bundle: every file against SHA256SUMS, the manifest schema, and optionally its signature."""
    from edgecompress.bundle import verify_bundle

    manifest = verify_bundle(bundle, allowed_signers=allowed_signers, identity=identity)
    signed = f", signed by {identity}" if identity else ""
    _echo(
        f"ok: {manifest.name} ({manifest.model.format}:{manifest.model.precision}), {len(manifest.files)} files{signed}"
    )


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (sign before zipping).")],
    key: Annotated[Path, typer.Option(help="Private SSH key (e.g. ssh-keygen -t ed25519).")],
) -> None:
    """Sign a bundle's SHA256SUMS with an SSH key (writes SHA256SUMS.sig; `verify --allowed-signers` checks it)."""
    from edgecompress.bundle import sign_bundle, verify_bundle

    verify_bundle(bundle)  # never sign what does not verify
    _echo(f"signed: {sign_bundle(bundle, key)}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .zip.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (8- or 16-bit) or .npy arrays.")],
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show per image (at least 1).")] = 3,
    time_limit: Annotated[
        float, typer.Option(min=0.1, help="Seconds the model may take for the images; past that, an error.")
    ] = 120.0,
) -> None:
    """Classify images with a bundle (checksums verified first); prints calibrated probabilities."""
    from edgecompress.bundle import predict_images
    from edgecompress.bundle.predict import PredictTimeout

    try:
        rows = predict_images(bundle, images, top_k=top_k, time_limit_s=time_limit)
    except PredictTimeout as exc:
        if not exc.stuck:
            raise
        print(f"error: {printable(exc)}", file=sys.stderr, flush=True)
        os._exit(exc.exit_code)  # the runtime cannot be stopped: leave without waiting for its thread
    for row in rows:
        _echo(json.dumps(row, allow_nan=False))  # ensure_ascii: JSON escapes every control character itself


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help="Run directory or bundle.")]) -> None:
    """Summarize a run directory (its report) or a bundle (its manifest)."""
    from edgecompress._contain import contained

    report = contained(path, "report.json", what="inspect", fix="a run directory's report.json is its own file")
    if report.is_file():
        for line in _report_lines(report):
            _echo(line)
        return
    from edgecompress.bundle import verify_bundle

    _echo(verify_bundle(path).model_dump_json(indent=2))


def _report_lines(report: Path) -> list[str]:
    """One line per model of a run's report.json (read as data: bounded, every field checked)."""
    fix = "rerun `edgecompress bench RUN` to rewrite the report"
    if report.stat().st_size > 64 << 20:
        raise EdgeCompressError(f"{report} is larger than a report is", fix)
    try:
        models = json.loads(report.read_text(encoding="utf-8"))["models"]
        lines = []
        for m in models:
            acc, ece = m.get("accuracy"), m.get("ece")
            lines.append(
                f"{str(m['name']):28s} {str(m['role']):9s} acc={'—' if acc is None else f'{float(acc):.4f}'} "
                f"ece={'—' if ece is None else f'{float(ece):.4f}'}"
            )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UnicodeDecodeError) as exc:
        raise EdgeCompressError(f"{report} is malformed ({type(exc).__name__})", fix) from None
    return lines


class _ClickExit(Protocol):
    """What :func:`main` reads of click's ``Exit`` (click's own or the copy typer ships)."""

    exit_code: int


class _ClickError(_ClickExit, Protocol):
    """What :func:`main` uses of click's ``ClickException`` and its subclasses (UsageError, NoArgsIsHelpError)."""

    def format_message(self) -> str: ...

    def show(self) -> None: ...


@overload
def _click_types(name: Literal["Exit"]) -> tuple[type[_ClickExit], ...]: ...


@overload
def _click_types(
    name: Literal["ClickException", "UsageError", "NoArgsIsHelpError"],
) -> tuple[type[_ClickError], ...]: ...


@overload
def _click_types(name: Literal["Abort"]) -> tuple[type[Exception], ...]: ...


def _click_types(name: str) -> tuple[type, ...]:
    """The exception class ``name`` of click, of the copy of click that typer ships (typer._click) and of typer
    itself (typer.exceptions.Abort wraps an EOFError or Ctrl-C)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _one_line(text: object, limit: int = 300) -> str:
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line for every error (usage errors included), the traceback only with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    interrupted = "interrupted — finished stages are kept; rerun the same command to resume"
    try:
        code = app(args=args, standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C inside a command into Exit(130) and returns that code
            print(interrupted, file=sys.stderr)
            return 130
        if isinstance(code, int) and not isinstance(code, bool) and code:
            return code
    except EdgeCompressError as exc:
        if debug:
            raise
        print(f"error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print(
            "error: out of memory — fix: free memory, lower the batch size or the number of samples, or use a larger "
            "machine; rerun with --debug to see where",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, _click_types("Exit")):
            return exc.exit_code
        if isinstance(exc, _click_types("NoArgsIsHelpError")):
            exc.show()  # `edgecompress` alone: the help text
            return exc.exit_code
        if isinstance(exc, _click_types("UsageError")):
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "edgecompress"
            command = "edgecompress" + command.split("edgecompress", 1)[1] if "edgecompress" in command else command
            print(f"error: {_one_line(exc.format_message())} — fix: see `{printable(command)} --help`", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, _click_types("ClickException")):
            print(f"error: {_one_line(exc.format_message())} — fix: see `edgecompress --help`", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, _click_types("Abort")) and not isinstance(exc.__context__, EOFError):
            print("aborted", file=sys.stderr)
            return 130
        if debug:
            raise
        known = describe_failure(exc.__context__ if isinstance(exc, _click_types("Abort")) else exc)
        if known is not None:
            print(f"error: {printable(known)}", file=sys.stderr)
            return known.exit_code
        print(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} — fix: rerun with --debug to see the traceback "
            "and report it",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
