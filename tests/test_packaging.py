"""The set-up files agree with each other, so the two README commands and conda install the same thing."""
import re
from pathlib import Path

from safety_neurons.config import PROJECT_ROOT


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            found[match[1].lower()] = match[2]
    return found


def test_environment_yml_carries_the_requirements_pins():
    assert pins(PROJECT_ROOT / "environment.yml") == pins(PROJECT_ROOT / "requirements.txt")


def test_constraints_agree_with_requirements():
    constraints = pins(PROJECT_ROOT / "constraints.txt")
    for name, version in pins(PROJECT_ROOT / "requirements.txt").items():
        assert constraints.get(name) == version, name


def test_torch_is_pinned_to_the_cpu_build_on_disk():
    assert pins(PROJECT_ROOT / "requirements.txt")["torch"] == "2.13.0"


def test_ci_runs_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make all" in readme
    assert "make test" in ci
