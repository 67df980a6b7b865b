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
