"""A .keras model on the JAX and TensorFlow backends: the same predictions, compiled, at fp32 and
bf16, named with backend, device and precision. Each backend runs in its own process (Keras
picks its backend once, at import)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SMALL_MODELS, keras_predict, random_images, spread_unet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="JAX is not installed (pip install jax)"),
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                       reason="TensorFlow is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH, CLASSES = 64, 96, 5

# Runs every model in argv[2:] at fp32 and bf16 on the backend the environment names; writes the
# outputs to argv[1] (an .npz) and what the predictors said of themselves beside it (.json).
RUN_PREDICTORS = """
import json, sys
import numpy as np
from edgeseg.runtime import load_predictor

out, batch_path, models = sys.argv[1], sys.argv[2], sys.argv[3:]
batch = np.load(batch_path)
arrays, report = {}, {}
for path in models:
    name = path.rsplit("/", 1)[-1].removesuffix(".keras")
    for precision in ("fp32", "bf16"):
        predictor = load_predictor(path, precision=precision)
        arrays[f"{name}_{precision}"] = predictor.run(batch)
        forward = predictor._forward
        jitted = getattr(forward, "func", None)
        report[f"{name}_{precision}"] = {
            "backend": predictor.backend, "device": predictor.device,
            "precision": predictor.precision, "runtime": predictor.runtime,
            "jitted": hasattr(jitted, "lower"),
            # The whole model lowered to one XLA program: what jax.jit compiles.
            "lowered": (jitted.lower(*forward.args, batch).as_text()[:20000]
                        if hasattr(jitted, "lower") else None),
            "concrete_function": hasattr(forward, "get_concrete_function"),
        }
report["tensorflow_imported"] = "tensorflow" in sys.modules
np.savez(out, **arrays)
with open(out.removesuffix(".npz") + ".json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """ENet (pooling indices, unpooling, PReLU) untrained, and a U-Net whose classes are spread
    (untrained logits tie, and a tie's argmax says nothing of precision), saved as .keras."""
    import keras

    from edgeseg.models import build

    folder = tmp_path_factory.mktemp("keras_backends")
    keras.utils.set_random_seed(0)
    enet = build("enet", CLASSES, (HEIGHT, WIDTH, 3), **SMALL_MODELS["enet"])
    paths = {"enet": folder / "enet.keras", "unet": folder / "unet.keras"}
    enet.save(paths["enet"])
    spread_unet(CLASSES, HEIGHT, WIDTH).save(paths["unet"])
    return paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keras_backends_batch") / "batch.npy"
    np.save(path, random_images(2, HEIGHT, WIDTH, seed=3))
    return path


def _run_on(backend: str, models: dict[str, Path], batch: Path, out: Path):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", RUN_PREDICTORS, str(out), str(batch), *map(str, models.values())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"{backend} run failed:\n{result.stderr[-4000:]}"
    return dict(np.load(out)), json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def jax_run(models, batch, tmp_path_factory):
    return _run_on("jax", models, batch, tmp_path_factory.mktemp("jax") / "out.npz")


@pytest.fixture(scope="module")
def tensorflow_run(models, batch, tmp_path_factory):
    return _run_on("tensorflow", models, batch, tmp_path_factory.mktemp("tf") / "out.npz")


@pytest.mark.parametrize("name", ["enet", "unet"])
def test_jax_prediction_equals_tensorflow_prediction(jax_run, tensorflow_run, models, batch,
                                                     name):
    import keras

    from edgeseg.models.loading import load_keras_model

    on_jax, on_tf = jax_run[0][f"{name}_fp32"], tensorflow_run[0][f"{name}_fp32"]
    assert on_jax.shape == on_tf.shape == (2, HEIGHT, WIDTH, CLASSES)
    assert keras.backend.backend() == "tensorflow"  # this process: the reference is eager TF
    reference = keras_predict(load_keras_model(models[name]), np.load(batch))
    np.testing.assert_allclose(on_tf, reference, atol=1e-5)
    np.testing.assert_allclose(on_jax, on_tf, atol=1e-4)


def test_jax_run_imports_no_tensorflow(jax_run):
    assert jax_run[1]["tensorflow_imported"] is False


def test_forward_pass_is_compiled(jax_run, tensorflow_run):
    for key in ("enet_fp32", "unet_fp32", "unet_bf16"):
        on_jax, on_tf = jax_run[1][key], tensorflow_run[1][key]
        assert on_jax["jitted"] and "stablehlo.convolution" in on_jax["lowered"], key
        assert on_tf["concrete_function"] and not on_tf["jitted"], key
    # bf16 compute in the lowered program: the mixed policy reached the convolutions.
    assert "bf16" in jax_run[1]["unet_bf16"]["lowered"]
    assert "bf16" not in jax_run[1]["unet_fp32"]["lowered"]


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_bf16_close_to_fp32(jax_run, tensorflow_run, backend):
    arrays = (jax_run if backend == "jax" else tensorflow_run)[0]
    fp32, bf16 = arrays["unet_fp32"], arrays["unet_bf16"]
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(fp32, bf16)  # it did compute in 16 bits
    assert (fp32.argmax(-1) == bf16.argmax(-1)).mean() > 0.9
    # bf16 keeps 8 bits of mantissa: errors of a few percent of the logits' range, not more.
    assert np.abs(fp32 - bf16).max() < 0.05 * np.abs(fp32).max()


def test_predictor_names_backend_device_and_precision(jax_run, tensorflow_run):
    import keras

    jax_fp32, tf_fp32 = jax_run[1]["enet_fp32"], tensorflow_run[1]["enet_fp32"]
    assert jax_fp32["backend"] == "jax" and tf_fp32["backend"] == "tensorflow"
    for report in (jax_fp32, tf_fp32):
        assert report["device"]["platform"] == "cpu"  # the runs hide any GPU
        assert report["precision"] == "fp32 (matmul precision: default)"
        assert report["runtime"].startswith(f"keras {keras.__version__} ({report['backend']} ")
        assert report["runtime"].endswith(" backend, cpu)")
    assert jax_run[1]["enet_bf16"]["precision"] == "bf16 (mixed_bfloat16)"


def test_precision_is_checked(models):
    from edgeseg.runtime import load_predictor

    with pytest.raises(ValueError, match="fp32, bf16, fp16.*'int4'"):
        load_predictor(models["enet"], precision="int4")


def test_dtype_policy_scope_builds_mixed_and_restores():
    import keras

    from edgeseg.models import build
    from edgeseg.runtime.predictor import dtype_policy_scope

    before = keras.config.dtype_policy().name
    with dtype_policy_scope("mixed_bfloat16"):
        model = build("unet", CLASSES, (HEIGHT, WIDTH, 3), **SMALL_MODELS["unet"])
    assert keras.config.dtype_policy().name == before
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {c.dtype_policy.name for c in convolutions} == {"mixed_bfloat16"}
    assert {v.dtype for v in model.weights} == {"float32"}
