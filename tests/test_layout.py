"""The house rules: which part of the package may import which; module and function sizes."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "tinytx_jax"
CORE_PACKAGES = ("text", "model", "scoring", "checkpoints")
CORE = {"configuration", "run_config", "parallel", "interrupt", *CORE_PACKAGES}
LAYERS = ("data", "training", "inference", "serving")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_imports(subpackage: str) -> set[str]:
    modules = set()
    for path in (PACKAGE / subpackage).glob("*.py"):
        modules |= {m for m in imported_modules(path) if m.split(".")[0] in ("tinytx_jax", "optax")}
    return modules


def test_inference_never_imports_training_or_optax():
    bad = {m for m in project_imports("inference") if "training" in m or m.startswith("optax")}
    assert not bad


def test_serving_imports_only_inference_and_the_core():
    allowed = ("tinytx_jax.inference", "tinytx_jax.serving")
    bad = {
        m
        for m in project_imports("serving")
        if not m.startswith(allowed)
        and m.removeprefix("tinytx_jax.").split(".")[0] not in CORE
        and m != "tinytx_jax"
    }
    assert not bad


def test_the_core_imports_no_layer_above_it():
    modules = ("configuration", "run_config", "parallel", "interrupt")
    files = [PACKAGE / f"{name}.py" for name in modules]
    files += [path for name in CORE_PACKAGES for path in (PACKAGE / name).glob("*.py")]
    for path in files:
        imports = imported_modules(path)
        assert not {m for m in imports if m.split(".")[:2][-1] in LAYERS}, path


def test_chat_eval_and_serve_load_no_optax_at_run_time():
    """Importing everything a chat, eval or server runs pulls in no optax and no training."""
    code = (
        "import sys; import tinytx_jax.serving.server, tinytx_jax.inference.evaluation; "
        "print(sorted(m for m in sys.modules if m == 'optax' or m.startswith('optax.') "
        "or m.startswith('tinytx_jax.training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_function_fits_on_a_screen_and_nothing_is_hand_packed():
    """No function over 80 lines, and no `# fmt: skip` to pass a line count by packing."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "fmt: skip" not in text and "fmt: off" not in text, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path}:{node.lineno} {node.name} has {length} lines"


def test_no_module_over_300_lines_and_main_py_under_80():
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 300, max(sizes, key=sizes.get)
    assert len((REPO / "main.py").read_text().splitlines()) <= 80
