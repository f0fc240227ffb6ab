"""The zoo's networks on an accelerator through Keras 3's JAX backend, without TensorFlow.

Measures, one JSON row per line in the schema of :mod:`edgeseg.bench.runner` (so that
``edgeseg bench report`` puts them beside the ENet paper's rows of the same network input):

- batch 1 latency of ENet, SegNet and U-Net at 640x360, 1280x720 and 1920x1080, in fp32 and
  with Keras' ``mixed_bfloat16`` policy (bf16 compute, fp32 variables);
- ENet throughput at batch 8 (``fps`` is images / s, ``latency_ms`` is per batch);
- ENet training images / s at 480x360 (a jitted train step: forward, sparse cross-entropy,
  gradients, Adam), in the table "enet training".

Each timing is the network alone, as the paper's rows are: a jitted ``model.stateless_call``
on an input already on the device, ended by ``block_until_ready``; the first call (tracing and
XLA compilation) is ``first_ms``, building the Keras model is ``load_ms``. Weights are random
and the input is random: speed does not depend on them.

The measurements run in order of importance (ENet first) and stop starting new ones once
``--budget-s`` has passed: what is left gets a row whose ``error`` says it was skipped, so the
script ends inside a short lease and says what it did not measure. TensorFlow is never
imported; every row records ``tensorflow_loaded`` and the run fails if it was.

Run through ``benchmarks/gpu/run.sh``, which sets ``KERAS_BACKEND=jax``; ``--quick`` is the same
script at a small size with a few runs, for the CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
NUM_CLASSES = 12  # CamVid's 11 classes and void, as the ENet paper's CamVid model
TRAIN_MODEL = "enet"
THROUGHPUT_MODEL = "enet"


@dataclass(frozen=True)
class Settings:
    """What to measure and how long."""

    models: tuple[str, ...] = ("enet", "segnet", "unet")
    sizes: tuple[tuple[int, int], ...] = ((640, 360), (1280, 720), (1920, 1080))
    precisions: tuple[str, ...] = ("fp32", "bf16")
    throughput_batch: int = 8
    throughput_size: tuple[int, int] = (640, 360)
    train_size: tuple[int, int] = (480, 360)
    train_batch: int = 8
    train_precisions: tuple[str, ...] = ("fp32",)
    warmup: int = 3
    runs: int = 30
    min_seconds: float = 1.0
    budget_s: float = 420.0
    model_options: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    def options(self, model: str) -> dict:
        return dict(dict(self.model_options).get(model, ()))


# One of the paper's sizes, so that the quick rows land in the report beside its rows.
QUICK = Settings(
    sizes=((640, 360),),
    throughput_batch=2,
    throughput_size=(640, 360),
    train_size=(128, 96),
    train_batch=2,
    warmup=1,
    runs=2,
    min_seconds=0.0,
    budget_s=600.0,
    # A narrower SegNet and U-Net: the quick run checks the script, not the networks' speed.
    model_options=(("segnet", (("width", 0.25),)), ("unet", (("filters", 8),))),
)


# --- environment ----------------------------------------------------------------------------------


def require_jax_backend() -> None:
    """Stops with a message unless Keras will run on JAX (before Keras is imported)."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend != "jax":
        raise SystemExit(
            f"bench_jax needs KERAS_BACKEND=jax (got {backend!r}); run benchmarks/gpu/run.sh, "
            "which sets it"
        )
    try:
        import jax  # noqa: F401
        import keras  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"bench_jax needs jax and keras ({error}); pip install \"edgeseg[jax]\" keras, or on "
            "a machine without a network carry their wheels (benchmarks/gpu/README.md)"
        ) from None


def runtime_label(compute_device: dict) -> str:
    """"keras 3.15.1 (jax 0.11.2 backend, gpu NVIDIA H200)": what ran the model, worded as the
    runtime's KerasPredictor words it."""
    from edgeseg.runtime.predictor import keras_runtime_label

    return keras_runtime_label(compute_device)


def peak_device_mb() -> float | None:
    """The accelerator's peak allocated memory so far (None where JAX does not report it, as
    on the CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


# --- timing ---------------------------------------------------------------------------------------


def time_calls(call: Callable[[], object], warmup: int, runs: int,
               min_seconds: float) -> tuple[float, list[float]]:
    """(first call ms, timed calls ms): ``call`` must block until its result is ready."""
    start = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(max(0, warmup - 1)):
        call()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < runs or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return first_ms, times


def build_model(name: str, size: tuple[int, int], precision: str, settings: Settings):
    """The zoo model at (W, H) under the precision's Keras dtype policy; and the ms it took."""
    import keras

    from edgeseg.models import build

    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        start = time.perf_counter()
        model = build(name, num_classes=NUM_CLASSES, input_shape=(size[1], size[0], 3),
                      **settings.options(name))
        return model, (time.perf_counter() - start) * 1000
    finally:
        keras.config.set_dtype_policy("float32")


def forward_timer(model, batch: int, size: tuple[int, int]) -> Callable[[], object]:
    """A call of the jitted stateless forward pass on a random batch already on the device."""
    import jax
    import numpy as np

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    rng = np.random.default_rng(0)
    images = jax.device_put(rng.random((batch, size[1], size[0], 3), dtype=np.float32))
    return lambda: forward(trainable, non_trainable, images).block_until_ready()


def train_timer(model, batch: int, size: tuple[int, int]) -> Callable[[], object]:
    """A call of a jitted training step (forward, sparse cross-entropy on the logits, gradients,
    Adam) on a random batch already on the device; the state carries from call to call."""
    import jax
    import keras
    import numpy as np

    optimizer = keras.optimizers.Adam(learning_rate=5e-4)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_of(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, images,
                                                     training=True)
        return loss_fn(labels, keras.ops.cast(logits, "float32")), non_trainable

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    @jax.jit
    def step(state, images, labels):
        trainable, non_trainable, optimizer_state = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, images, labels)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_state)

    rng = np.random.default_rng(0)
    images = jax.device_put(rng.random((batch, size[1], size[0], 3), dtype=np.float32))
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, (batch, size[1], size[0]),
                                         dtype=np.int32))
    state = [([v.value for v in model.trainable_variables],
              [v.value for v in model.non_trainable_variables],
              [v.value for v in optimizer.variables])]

    def call():
        loss, state[0] = step(state[0], images, labels)
        return loss.block_until_ready()

    return call


# --- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One measurement: a model at a size, precision, batch and mode ("infer" or "train")."""

    model: str
    size: tuple[int, int]
    precision: str
    batch: int = 1
    mode: str = "infer"

    @property
    def label(self) -> str:
        return self.model if self.mode == "infer" else f"{self.model} training"


def plan(settings: Settings) -> list[Job]:
    """The measurements in the order they run: ENet first (latency, its batch throughput, its
    training), then the other models; fp32 before the reduced precisions at each size."""
    jobs: list[Job] = []
    for model in settings.models:
        for precision in settings.precisions:
            for size in settings.sizes:
                jobs.append(Job(model, size, precision))
                if model == THROUGHPUT_MODEL and size == settings.throughput_size:
                    jobs.append(Job(model, size, precision, batch=settings.throughput_batch))
            if model == THROUGHPUT_MODEL and settings.throughput_size not in settings.sizes:
                jobs.append(Job(model, settings.throughput_size, precision,
                                batch=settings.throughput_batch))
        if model == TRAIN_MODEL:
            jobs += [Job(model, settings.train_size, precision, batch=settings.train_batch,
                         mode="train") for precision in settings.train_precisions]
    return jobs


def base_row(job: Job, settings: Settings, device: dict, runtime: str,
             compute_device: dict) -> dict:
    """A row of ``edgeseg bench``'s schema for the job, before it is measured."""
    from edgeseg.bench.runner import new_row, size_label
    from edgeseg.runtime.predictor import precision_label

    row = new_row(Path(job.label), {"size": job.size, "model_size": "frame", "resize": None,
                                    "threads": None, "device": device,
                                    "warmup": settings.warmup})
    row.update(
        artifact=None,
        format="keras",
        quant=job.precision,
        model_input=size_label(job.size),
        model_bytes=None,
        runtime=runtime,
        backend="jax",
        compute_device=compute_device,
        precision=precision_label(job.precision, compute_device),
        compute_dtype="bfloat16" if job.precision == "bf16" else (
            "float16" if job.precision == "fp16" else "float32"),
        batch=job.batch,
        mode=job.mode,
        precision_policy=PRECISIONS[job.precision],
        peak_device_mb=None,
    )
    return row


def describe(job: Job, options: dict) -> str:
    what = "training step" if job.mode == "train" else "jitted forward pass"
    changed = ", ".join(f"{k}={v}" for k, v in options.items())
    return (f"{what}, batch {job.batch}, network alone on a device-resident random input; "
            + ("latency_ms is per batch and fps is images / s" if job.batch > 1
               else "fps = 1000 / median")
            + (f"; not the paper's network: {changed}" if changed else ""))


def measure(job: Job, settings: Settings, row: dict, built: dict) -> dict:
    """Fills the row's timings for the job. ``built`` holds the last model built, by (name,
    size, precision), so that a batch-8 row reuses the batch-1 row's model."""
    from edgeseg.bench.stats import latency_stats

    key = (job.model, job.size, job.precision)
    if key not in built:
        built.clear()
        built[key] = build_model(job.model, job.size, job.precision, settings)
    model, load_ms = built[key]
    timer = (train_timer if job.mode == "train" else forward_timer)(model, job.batch, job.size)
    first_ms, times = time_calls(timer, settings.warmup, settings.runs, settings.min_seconds)
    stats = latency_stats(times)
    row.update(
        latency_ms={"preprocess": None, "inference": stats, "postprocess": None,
                    "total": stats},
        fps=1000.0 * job.batch / stats["median"] if stats["median"] > 0 else None,
        runs=len(times),
        load_ms=load_ms,
        first_ms=first_ms,
        note=describe(job, settings.options(job.model)),
    )
    return row


def run(settings: Settings, out: Path) -> Iterator[dict]:
    """Measures each planned job, appending its row to ``out`` as soon as it is done."""
    import jax

    from edgeseg.bench.fingerprint import device_fingerprint
    from edgeseg.bench.runner import describe_error, finish_row, write_jsonl
    from edgeseg.bench.worker import peak_rss_mb
    from edgeseg.runtime.predictor import keras_device

    device = device_fingerprint()
    device["jax_devices"] = [f"{d.platform}: {d.device_kind}" for d in jax.devices()]
    compute_device = keras_device()
    runtime = runtime_label(compute_device)
    began = time.perf_counter()
    built: dict = {}
    for job in plan(settings):
        row = base_row(job, settings, device, runtime, compute_device)
        spent = time.perf_counter() - began
        error = None
        if spent > settings.budget_s:
            error = (f"Skipped: the run's time budget of {settings.budget_s:g} s was spent "
                     f"({spent:.0f} s) before this measurement started")
        else:
            try:
                measure(job, settings, row, built)
            except Exception as error_:  # one failed measurement is a result, not a crash
                error = describe_error(error_)
        row.update(peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device_mb(),
                   tensorflow_loaded="tensorflow" in sys.modules)
        finish_row(row, error)
        write_jsonl([row], out)
        # The compiled functions hold their inputs' buffers; the model stays for the next row.
        gc.collect()
        jax.clear_caches()
        yield row


def summary_line(row: dict) -> str:
    head = (f"{row['model']} {row['quant']} {row['size']} batch {row['batch']}")
    if row["error"]:
        return f"{head}: {row['error']}"
    median = row["latency_ms"]["total"]["median"]
    return (f"{head}: {median:.2f} ms median, {row['fps']:.1f} images/s, first call "
            f"{row['first_ms']:.0f} ms, build {row['load_ms']:.0f} ms, {row['runs']} runs")


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_jax", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for results.jsonl (appended to) and summary.json")
    parser.add_argument("--quick", action="store_true",
                        help="one small size, a few runs, a tiny training step: checks the "
                             "script on a CPU")
    parser.add_argument("--models", help="comma list (default: enet,segnet,unet)")
    parser.add_argument("--sizes", help="comma list of WxH (default: 640x360,1280x720,1920x1080)")
    parser.add_argument("--precisions", help=f"comma list of {', '.join(PRECISIONS)} "
                                             "(default: fp32,bf16)")
    parser.add_argument("--runs", type=int, help="timed calls per measurement (at least)")
    parser.add_argument("--budget-s", type=float,
                        help="start no measurement after this many seconds (default 420)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    from edgeseg.bench.runner import parse_sizes
    from edgeseg.models import get_spec

    settings = QUICK if args.quick else Settings()
    changes: dict = {}
    if args.models:
        changes["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
        for name in changes["models"]:
            get_spec(name)  # an unknown name stops here, with the valid ones
    if args.sizes:
        changes["sizes"] = tuple(parse_sizes(args.sizes))
    if args.precisions:
        changes["precisions"] = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
        unknown = [p for p in changes["precisions"] if p not in PRECISIONS]
        if unknown:
            raise SystemExit(f"unknown precision(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(PRECISIONS)}")
    if args.runs is not None:
        if args.runs < 1:
            raise SystemExit(f"--runs must be at least 1; got {args.runs}")
        changes["runs"] = args.runs
    if args.budget_s is not None:
        changes["budget_s"] = args.budget_s
    return replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_jax_backend()
    settings = settings_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    began = time.perf_counter()
    rows = []
    for row in run(settings, results):
        rows.append(row)
        print(summary_line(row), flush=True)
    tensorflow_loaded = "tensorflow" in sys.modules
    summary = {
        "results": str(results),
        "rows": len(rows),
        "failed": sum(1 for row in rows if row["error"]),
        "seconds": round(time.perf_counter() - began, 1),
        "quick": args.quick,
        "backend": os.environ.get("KERAS_BACKEND"),
        "runtime": rows[0]["runtime"] if rows else None,
        "tensorflow_loaded": tensorflow_loaded,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n",
                                           encoding="utf-8")
    print(json.dumps(summary), flush=True)
    if tensorflow_loaded:
        print("bench_jax: TensorFlow was imported, which this benchmark must not do",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
