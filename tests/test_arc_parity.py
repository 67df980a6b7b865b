"""ARC parity with the official pipeline (issue 25): the official evaluation's submission.json and pass@K, made once by
the official code, reproduced by `engine-convert` + `engine-eval --task arc --dataset`.

tests/fixtures/official/arc/ holds a small random-weight official TRM at ARC's shape (RoPE attention, 900 cells, the
28 puzzle identifiers of tests/fixtures/arc/official/, the official builder's dataset of three synthetic tasks x 8
augmentations), its weights shaped so predictions crop to real grids and the variants disagree, and what the official
`pretrain.py` evaluation loop and `evaluators/arc.py` made of the dataset's test split: submission.json, the
pass@K dict and the per-row predictions and Q logits (tests/fixtures/official/README.md says how, with
tests/fixtures/official/produce.py). Its all_config.yaml names the dataset as its data path, so engine-convert finds
the identifiers there. The project's predictions and Q logits equal the official ones bit for bit with the fixtures'
pinned kernels (in a subprocess, as tests/test_official_parity.py); the vote is then exact anyway, and with this
machine's own kernels the predictions are still the same (the smallest top-two logit gap is 1.4).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine.checkpoint import load_checkpoint
from engine.checkpoint import main as convert
from engine.eval import main as evaluate
from engine.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "arc"
DATASET = ROOT / "tests" / "fixtures" / "arc" / "official"
ARC = get_task("arc")
PINNED = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "DNNL_MAX_CPU_ISA": "SSE41"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("arc") / "ckpt"
    convert([str(FIXTURE / "step_500"), str(out)])  # no --identifiers: found through all_config.yaml's data path
    return out


def run_eval(ckpt: Path, out: Path, *flags: str) -> tuple[dict, dict, list]:
    evaluate(
        ["--checkpoint", str(ckpt), "--task", "arc", "--dataset", str(DATASET), "--threads", "1", *flags]
        + ["--submission", str(out / "submission.json"), "--json", str(out / "summary.json")]
        + ["--out", str(out / "rows.jsonl")]
    )
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return json.loads((out / "submission.json").read_text()), json.loads((out / "summary.json").read_text()), rows


def test_conversion_records_the_identifiers_of_the_dataset_build(converted, tmp_path):
    ckpt = load_checkpoint(converted)
    assert ckpt.identifiers == json.loads((DATASET / "identifiers.json").read_text())
    assert ckpt.test_puzzles == json.loads((DATASET / "test_puzzles.json").read_text())
    wrong = tmp_path / "identifiers.json"
    wrong.write_text(json.dumps(ckpt.identifiers[:-1]))
    with pytest.raises(
        SystemExit, match="names 27 puzzle identifiers but the checkpoint's puzzle-embedding table has 28"
    ):
        convert([str(FIXTURE / "step_500"), str(tmp_path / "refused"), "--identifiers", str(wrong)])
    assert not (tmp_path / "refused").exists()


def test_engine_eval_gives_the_official_submission_and_pass_at_k(converted, tmp_path):
    """With this machine's kernels, in this process."""
    submission, summary, _ = run_eval(converted, tmp_path)
    assert submission == json.loads((FIXTURE / "submission.json").read_text())
    expected = json.loads((FIXTURE / "expected_metrics.json").read_text())
    assert {k: summary[k] for k in expected} == expected
    assert (summary["n"], summary["test_inputs"], summary["variants"]) == (2, 3, 27)


def test_predictions_and_q_are_the_official_rows_bit_for_bit(converted, tmp_path):
    """With the fixtures' pinned kernels, in a subprocess (they must be set before torch loads)."""
    env = {**os.environ, **PINNED, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, __file__, str(converted), str(tmp_path)], env=env, check=True)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    official = load_file(FIXTURE / "rows.safetensors")
    assert [r["puzzle_id"] for r in rows] == official["puzzle_identifiers"].tolist()
    assert [r["answer"] for r in rows] == [ARC.to_text(p) for p in official["preds"].astype(np.int64)]
    assert np.array_equal(np.array([r["q"] for r in rows], np.float32), official["q_halt_logits"])
    assert json.loads((tmp_path / "submission.json").read_text()) == json.loads(
        (FIXTURE / "submission.json").read_text()
    )


if __name__ == "__main__":  # the pinned-kernel subprocess: CKPT_DIR OUT_DIR
    run_eval(Path(sys.argv[1]), Path(sys.argv[2]))
