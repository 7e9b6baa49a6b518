"""One code path for every Keras backend: a model trained and saved under one backend loads
and predicts the same probabilities under another, and nothing outside the runtime helper
imports a framework."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from components.training import backbones, loop, runtime
from components.training.batches import Batches
from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[3]
# Probabilities of one float32 model on two backends differ by float rounding only.
TOLERANCE = 1e-4

pytestmark = pytest.mark.backends

_PREDICT_ELSEWHERE = """
import json, sys
import numpy as np
from components.training import backbones, loop, runtime
model = backbones.load_model(sys.argv[1])
probs = loop.predict(model, np.load(sys.argv[2]))
print(json.dumps({"backend": runtime.backend(), "probs": probs.tolist()}))
"""


def _other_backend() -> str:
    return "jax" if runtime.backend() == "tensorflow" else "tensorflow"


@pytest.mark.slow
def test_a_model_trained_on_one_backend_predicts_the_same_on_another(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 32, 32, 3)).astype(np.float32)
    y = (x[:, :16].mean(axis=(1, 2, 3)) > x[:, 16:].mean(axis=(1, 2, 3))).astype(np.int32)
    model = backbones.build_model("MobileNetV2", 32, "none", head_units=(8,))
    loop.compile_model(model, 1e-3)
    step = runtime.train_step(model, loop.weighted_loss)
    batches = Batches(x, y, np.ones(len(y), np.float32), np.arange(len(y)), 8, shuffle=True)
    loop.fit_epoch(step, batches, 0, "tiny", positive=0)
    loop.PreciseBatchNorm(model)(x, np.arange(len(x)))
    probs = loop.predict(model, x)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)

    env = project_env({"KERAS_BACKEND": _other_backend(), "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_ELSEWHERE, str(tmp_path / "model.keras"), "x.npy"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = json.loads(done.stdout.strip().splitlines()[-1])
    assert elsewhere["backend"] == _other_backend()
    assert probs.std() > 0  # the check compares something that varies
    np.testing.assert_allclose(np.array(elsewhere["probs"]), probs, atol=TOLERANCE)


def test_the_runtime_records_the_active_backend_and_pins_its_framework():
    rt = runtime.configure_runtime("off", "auto")
    assert rt.backend == keras.backend.backend()
    assert rt.precision == "float32"
    assert rt.xla == (rt.backend == "jax")  # JAX always compiles; TF without a GPU does not
    pins = runtime.framework_requirements()
    assert pins[-1] == f"keras=={keras.__version__}"
    assert pins[0].split("==")[0] in {"tensorflow", "jax", "torch"}


def test_input_gradient_is_the_analytic_one():
    def f(t):
        return keras.ops.sum(keras.ops.square(t) * 3.0)

    x = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
    np.testing.assert_allclose(runtime.input_gradient(f, x), 6.0 * x, rtol=1e-6)


def test_no_module_but_the_runtime_helper_imports_a_framework():
    frameworks = {"tensorflow", "jax", "jaxlib", "torch"}
    offenders = []
    for folder in ("components", "flows", "myelomet"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "runtime.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in frameworks
                ]
    assert not offenders
