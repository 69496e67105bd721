"""The README's Python example runs (with fewer steps) and its test command is CI's."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    assert "train.steps=200" in code and "runs/api" in code
    code = code.replace("train.steps=200", "train.steps=3").replace("runs/api", str(tmp_path / "api"))
    code = code.replace('["train.steps', '["train.progress=false", "train.steps')
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "api" / "encoder.safetensors").exists()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"## Tests\n\n```bash\n(.*?)\n```", readme).group(1).strip()
    assert cmd in ci and "torch==2.13.0" in ci
