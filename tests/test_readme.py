import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(python3\.11 -m venv .*?)\n```", (ROOT / "README.md").read_text())


def test_readme_names_two_set_up_commands_and_ci_runs_the_test_one():
    install_and_serve, run_tests = readme_commands()
    assert install_and_serve.endswith("engine-serve") and "pytest" in run_tests
    assert run_tests in (ROOT / ".ci" / "run").read_text().splitlines()
