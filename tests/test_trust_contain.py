"""The one containment rule (issue 26, item 1), property-based: whatever a received run.json, manifest or config names
— relative, absolute, ``..``, links inside and out, odd encodings — nothing outside the root is read or written.

Each example builds a root holding files, folders and symbolic links (some pointing inside, some outside, some
dangling, one a loop), next to an ``outside`` folder with a secret file, and a path value drawn from the same pieces.
:func:`edgecompress._contain.contained` must either refuse it in one line or return a path inside the resolved root;
reading through what it returns never yields the secret, and a write into a run directory (``_io``'s
``check_write``) never lands outside.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import one_line_message
from edgecompress import _io
from edgecompress._contain import contained, is_inside
from edgecompress.errors import ConfigError, EdgeCompressError, ResourceError

SECRET = "outside-secret-7d1f"
INSIDE = "inside-data"

# the pieces of a generated tree and of generated paths
NAMES = ["a", "b", "c", "figures", "stages", "x.png", "model.onnx", "é", "sp ace", "new"]
ODD = ["..", ".", "", "\x00", "a\x00b", "\udcff", "\\..\\", "\n", "\x1b[31m", "~", "//", "/..", "..."]
LINK_TARGETS = ["INSIDE_FILE", "INSIDE_DIR", "OUTSIDE_FILE", "OUTSIDE_DIR", "ROOT", "PARENT", "DANGLING", "LOOP"]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(kind, relative path, link target) entries: kind is dir, file or link."""
    entries = []
    for _ in range(draw(st.integers(1, 8))):
        depth = draw(st.integers(1, 3))
        rel = "/".join(draw(st.sampled_from(NAMES)) for _ in range(depth))
        kind = draw(st.sampled_from(["dir", "file", "link", "link"]))
        entries.append((kind, rel, draw(st.sampled_from(LINK_TARGETS))))
    return entries


@st.composite
def path_values(draw: st.DrawFn) -> str:
    """A path as a received record could hold it."""
    parts = draw(st.lists(st.sampled_from(NAMES + ODD), min_size=1, max_size=5))
    rel = "/".join(parts)
    style = draw(st.sampled_from(["relative", "absolute-root", "absolute-outside", "absolute-other", "raw"]))
    if style == "absolute-root":
        return "ROOT/" + rel
    if style == "absolute-outside":
        return "OUTSIDE/" + rel
    if style == "absolute-other":
        return "/etc/" + rel
    if style == "raw":
        return draw(st.text(max_size=30))
    return rel


def _build(base: Path, entries: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    root, outside = base / "run", base / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "dir" / "secret.txt").write_text(SECRET)
    root.mkdir()
    (root / "real").mkdir()
    (root / "real" / "data.txt").write_text(INSIDE)
    targets = {
        "INSIDE_FILE": root / "real" / "data.txt",
        "INSIDE_DIR": root / "real",
        "OUTSIDE_FILE": outside / "secret.txt",
        "OUTSIDE_DIR": outside / "dir",
        "ROOT": root,
        "PARENT": base,
        "DANGLING": base / "nowhere",
    }
    for kind, rel, target in entries:
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "file":
                path.write_text(INSIDE)
            else:
                os.symlink(path if target == "LOOP" else targets[target], path)
        except OSError:  # a name already taken by another kind, or under a file or a link: skip it
            continue
    return root, outside


def _concrete(value: str, root: Path, outside: Path) -> str:
    if value.startswith("ROOT/"):
        return str(root) + value[4:]
    if value.startswith("OUTSIDE/"):
        return str(outside) + value[7:]
    return value


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=trees(), value=path_values())
def test_contained_never_reads_outside(entries, value) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = _build(Path(tmp), entries)
        path = _concrete(value, root, outside)
        try:
            got = contained(root, path, what="run.json")
        except ConfigError as exc:
            one_line_message(exc)
            assert "\x1b" not in str(exc) and "\x00" not in str(exc)  # the message itself is printable
            return
        base = Path(os.path.realpath(root))
        assert is_inside(got, base), (path, got)
        # what is read through the returned path is inside the root: never the secret
        if got.is_file():
            assert got.read_text(errors="replace") != SECRET
            assert is_inside(Path(os.path.realpath(got)), base), (path, got)
        elif got.exists():
            assert is_inside(Path(os.path.realpath(got)), base), (path, got)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=trees(), value=path_values())
def test_writes_into_a_run_never_land_outside(entries, value) -> None:
    """Through the ledger-registered run root, an atomic write either lands inside or is refused in one line."""
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = _build(Path(tmp), entries)
        before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
        target = Path(_concrete(value, root, outside))
        if not target.is_absolute():
            target = root / target
        _io.register_ledger(root, root / ".ledger.jsonl")
        try:
            _io.atomic_write_text(target / "written.txt", "x")
        except ResourceError as exc:
            one_line_message(exc)
        except (OSError, ValueError):  # the OS refuses the name itself (NUL, a file as a folder, a dangling loop)
            pass
        finally:
            _io.unregister_ledger(root)
        after = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
        lexically_inside = os.path.abspath(target).startswith(str(root) + os.sep) or os.path.abspath(target) == str(
            root
        )
        if lexically_inside:  # a path the run itself names: nothing outside may change
            assert after == before, value
        shutil.rmtree(root, ignore_errors=True)


def test_a_leaving_link_is_named_in_one_line(tmp_path: Path) -> None:
    root, outside = _build(tmp_path, [("link", "figures", "OUTSIDE_DIR")])
    with pytest.raises(ConfigError) as err:
        contained(root, "figures/latency.png", what="the report")
    msg = one_line_message(err.value)
    assert f"{root / 'figures'} is a symbolic link to {outside / 'dir'}" in msg
    assert "remove the link" in msg


@pytest.mark.parametrize(
    ("value", "part"),
    [
        ("../secret.txt", "leads out of the run directory"),
        ("real/../../outside/secret.txt", "leads out of the run directory"),
        ("/etc/passwd", "outside the run directory"),
        ("a\x00b", "NUL byte"),
        ("", "empty"),
    ],
)
def test_refusals_say_why(value: str, part: str, tmp_path: Path) -> None:
    root, _ = _build(tmp_path, [])
    with pytest.raises(EdgeCompressError, match=part):
        contained(root, value, what="run.json")


def test_links_and_dotdot_that_stay_inside_are_followed(tmp_path: Path) -> None:
    root, _ = _build(tmp_path, [("link", "alias", "INSIDE_DIR")])
    assert contained(root, "alias/data.txt", what="x").read_text() == INSIDE
    assert contained(root, "real/../real/./data.txt", what="x") == Path(os.path.realpath(root)) / "real" / "data.txt"
    assert contained(root, str(root / "real" / "data.txt"), what="x").read_text() == INSIDE
