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
