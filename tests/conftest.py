import pytest
import torch

from engine.checkpoint import save_checkpoint
from engine.models import TRM, preset


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """A random sudoku-tiny TRM checkpoint, shared by the module (`tiny_checkpoint` is per test)."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", TRM(preset("sudoku-tiny")), "sudoku")


@pytest.fixture
def client(ckpt_dir):
    """A TestClient of the small app on `ckpt_dir`, ready."""
    from fastapi.testclient import TestClient
    from live import app_for, wait_ready

    with TestClient(app_for(ckpt_dir)) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A randomly initialised sudoku-tiny checkpoint directory."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny", TRM(preset("sudoku-tiny")), "sudoku")


@pytest.fixture
def tiny_model() -> TRM:
    """A random float32 sudoku-tiny TRM whose Q head reads the state (a fresh one starts at weight 0)."""
    torch.manual_seed(0)
    model = TRM(preset("sudoku-tiny", forward_dtype="float32")).eval()
    torch.nn.init.normal_(model.q_head.weight)
    return model
