"""The optional extra `ray` (issue 24): nothing outside the Ray entry points imports ray, and without it those entry
points say which install command is missing."""

import subprocess
import sys
from pathlib import Path

import pytest
from live import PUZZLE

from engine.eval import main as eval_main
from engine.ray_extra import INSTALL, require_ray


def test_the_service_the_eval_and_the_trainer_never_import_ray():
    code = "import sys, server.main, server.app, engine.eval, engine.train.cli, clients; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_without_ray_the_ray_entry_points_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    with pytest.raises(SystemExit) as missing:
        require_ray()
    assert INSTALL in str(missing.value)
    (tmp_path / "p.txt").write_text(PUZZLE + "\n")
    checkpoint = str(Path(__file__).resolve().parent.parent / "checkpoints" / "sudoku-trm")
    with pytest.raises(SystemExit, match="optional extra `ray`"):
        eval_main(["--checkpoint", checkpoint, "--puzzles", str(tmp_path / "p.txt"), "--ray"])
    monkeypatch.delitem(sys.modules, "server.ray_serve", raising=False)
    with pytest.raises(SystemExit, match="optional extra `ray`"):
        import server.ray_serve  # noqa: F401
