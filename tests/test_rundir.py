"""Content-addressed stage folders, done markers, early checks of the output directory."""

import os

import pytest

from edgecompress.errors import ResourceError
from edgecompress.pipeline.rundir import RunDir


def test_same_config_same_folder_and_done_marker(tmp_path):
    run = RunDir(tmp_path / "r")
    run.prepare()
    a = run.stage("teacher", {"lr": 0.1, "data": "abc"})
    b = run.stage("teacher", {"data": "abc", "lr": 0.1})
    c = run.stage("teacher", {"lr": 0.2, "data": "abc"})
    assert a.path == b.path != c.path
    assert not a.done
    a.finish({"accuracy": 0.5})
    assert b.done and b.result() == {"accuracy": 0.5}
    assert not c.done


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: permission bits do not stop it")
def test_unwritable_out(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(ResourceError, match="not writable|cannot create"):
        RunDir(locked / "run").prepare()


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ResourceError, match="cannot create the run directory"):
        RunDir(f / "run").prepare()


def test_stage_results_follow_a_moved_run(tmp_path):
    """A run directory copied elsewhere: paths its stages recorded point into the copy, other strings are untouched."""
    import shutil

    run = RunDir(tmp_path / "r")
    run.prepare()
    st = run.stage("export", {"f": 1})
    st.path.mkdir(parents=True, exist_ok=True)
    model = st.path / "artifacts" / "m.onnx"
    st.finish({"model_file": str(model), "files": [str(model)], "note": f"{tmp_path}/r-not-under", "n": 3})
    shutil.copytree(tmp_path / "r", tmp_path / "moved")
    again = RunDir(tmp_path / "moved").stage("export", {"f": 1})
    res = again.result()
    assert res["model_file"] == str(again.path / "artifacts" / "m.onnx") and res["files"] == [res["model_file"]]
    assert res["note"] == f"{tmp_path}/r-not-under" and res["n"] == 3 and "_run_root" not in res
    assert st.result()["model_file"] == str(model)  # the original still reads its own paths
