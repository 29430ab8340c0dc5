"""The GPU paths' defects, fixed and checked on a CPU: what can be proven without a GPU is proven
here (benchmarks/gpu_check.py runs the rest on a GPU)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx
import pytest
import ray
import torch

from cifar_tune import bench as bench_mod
from cifar_tune import data as data_mod
from cifar_tune import export as export_mod
from cifar_tune import machine
from cifar_tune import train as train_mod
from cifar_tune.config import ExportConfig, ModelConfig, validate_config
from cifar_tune.data import load_data, normalize
from cifar_tune.export import BUILDERS, CompiledVariant, EagerVariant, OrtVariant, load_best_model, save_onnx, save_onnx_fp16
from cifar_tune.machine import device_name, unmet
from cifar_tune.meters import LatencyMeter, measure_latencies
from cifar_tune.models import build_model
from cifar_tune.names import EXPORT_CACHE_DIR
from cifar_tune.orchestrator import export_hook
from cifar_tune.precision import policy
from cifar_tune.search import SearchPlan
from cifar_tune.storage import Location
from cifar_tune.train import Trainer
from cifar_tune.variants import SPECS, VARIANTS

from conftest import FAST_VARIANTS

QUICK = ExportConfig(batch_sizes=[2], warmup_runs=0, min_runs=2, min_duration_s=0.0, calibration_images=32,
                     end_to_end=False, variants=FAST_VARIANTS)


@pytest.fixture(scope="module")
def checkpoint(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    config = validate_config({"data": {"root": str(cifar_root), "download": False, "val_size": 100,
                                       "train_subset": 64}, "train": {"epochs": 1, "batch_size": 32}})
    data = load_data(config.data)
    trainer = Trainer(config.train, config.model, data)
    trainer.train_epoch()
    folder = tmp_path_factory.mktemp("ckpt")
    trainer.save(folder)
    return folder, data


def test_onnx_fp16_builds_and_passes_the_checker(checkpoint, tmp_path: Path) -> None:
    """convert_float_to_float16(keep_io_types=True) leaves the graph unsorted; the export sorts it."""
    model, _ = load_best_model(checkpoint[0])
    fp16 = save_onnx_fp16(save_onnx(model, tmp_path / "model.onnx"), tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(fp16))
    onnx.checker.check_model(graph, full_check=True)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 out
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_fp32_rows_are_built_and_timed_with_tf32_off(checkpoint, tmp_path: Path, monkeypatch) -> None:
    seen = []
    real = bench_mod.build_variants

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_mod, "build_variants", spy)
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: what a GPU process starts with
    torch.backends.cuda.matmul.allow_tf32 = True
    folder, data = checkpoint
    bench_mod.bench_checkpoint(folder, tmp_path, data.test_x, data.test_y, data.train_x, QUICK,
                               device=torch.device("cpu"), threads=1)
    assert seen == [(False, False)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored


def test_bench_rows_name_the_device_each_variant_ran_on(checkpoint, tmp_path: Path) -> None:
    folder, data = checkpoint
    result = bench_mod.bench_checkpoint(folder, tmp_path, data.test_x, data.test_y, data.train_x, QUICK,
                                        device=torch.device("cpu"), threads=1)
    for row in result["bench"]:
        assert row["device_name"] == device_name(torch.device(row["device"]))


def test_normalize_builds_its_statistics_once_per_device() -> None:
    data_mod._channel_stats.cache_clear()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first = normalize(images)
    normalize(images)
    info = data_mod._channel_stats.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert torch.allclose(first.mean(dim=(0, 2, 3)), ((images.float() / 255).mean(dim=(0, 2, 3))
                                                       - torch.tensor(data_mod.MEAN)) / torch.tensor(data_mod.STD))


@pytest.mark.parametrize("cluster_gpus, trial_share, expected", [(0, 0.0, 0.0), (1, 0.25, 0.25), (2, 0.0, 1.0)])
def test_an_export_asks_for_the_trials_gpu_share(tiny_raw, monkeypatch, cluster_gpus: int, trial_share: float,
                                                  expected: float) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2, "GPU": cluster_gpus})
    config = validate_config({**tiny_raw, "resources": {"gpus_per_trial": trial_share}})
    assert export_hook.export_gpus(config) == expected
    config.export.gpus = 0.5  # an explicit share always wins
    assert export_hook.export_gpus(config) == 0.5


@pytest.mark.usefixtures("ray_for_tests")
def test_queued_exports_each_get_the_timeout_not_one_shared(tiny_raw) -> None:
    @ray.remote(num_cpus=2)  # one at a time on the 2-CPU test Ray: they queue, as on a busy GPU
    def slow(seconds: float) -> dict[str, Any]:
        time.sleep(seconds)
        return {"bench": []}

    config = validate_config({**tiny_raw, "export": {"enabled": True, "timeout_s": 4}})
    hook = export_hook.ExportCallback(config, SearchPlan.of(config))
    hook.pending = {f"t{i}": (slow.remote(1.5), {"trial_id": f"t{i}"}) for i in range(3)}  # 4.5 s in all
    hook.pending["stuck"] = (slow.options(num_cpus=0).remote(600), {"trial_id": "stuck"})  # runs beside them
    hook.collect(config.export.timeout_s)
    assert {k: v["status"] for k, v in hook.outcomes.items()} == {"t0": "ok", "t1": "ok", "t2": "ok",
                                                                    "stuck": "timeout"}
    assert "export.timeout_s=4" in hook.outcomes["stuck"]["reason"]


# --------------------------------------------------------------------------- issue 18's defects, shown on a CPU


def test_compiled_variants_copy_outputs_exactly_where_torch_replays_cuda_graphs(monkeypatch) -> None:
    """torch's own mode table decides: "max-autotune" replays CUDA graphs too, not only "reduce-overhead"."""
    from torch._inductor import list_mode_options

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)  # the mode's options, not a compile
    model = build_model(validate_config({}).model)
    for mode in (None, "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        graphs = bool(list_mode_options(mode or "default").get("triton.cudagraphs"))
        assert CompiledVariant("c", model, torch.device("cpu"), mode).reuses_output is graphs, mode
    assert list_mode_options("max-autotune")["triton.cudagraphs"]  # why the registry avoids that mode
    autotune, graphs = SPECS["compiled_max_autotune"], SPECS["compiled_cudagraphs"]
    assert list_mode_options(autotune.compile_mode).get("max_autotune")
    assert not list_mode_options(autotune.compile_mode).get("triton.cudagraphs")  # autotuning alone
    assert list_mode_options(graphs.compile_mode).get("triton.cudagraphs")  # graphs alone
    assert not list_mode_options(graphs.compile_mode).get("max_autotune")


def test_every_registered_variant_has_one_builder() -> None:
    assert set(BUILDERS) == set(VARIANTS)


def test_a_fused_optimizer_keeps_the_grad_scaler_from_syncing_every_step(checkpoint, monkeypatch) -> None:
    """GradScaler.step calls .item() (a host/GPU sync) in _maybe_opt_step unless the optimizer is fused."""
    assert train_mod.fused_optimizer(torch.device("cuda")) is True
    _, data = checkpoint
    config = validate_config({"train": {"epochs": 1, "batch_size": 16, "precision": "amp_fp16",
                                        "allow_slow_precision": True}})
    syncing = []
    real = torch.amp.GradScaler._maybe_opt_step
    monkeypatch.setattr(torch.amp.GradScaler, "_maybe_opt_step",
                        lambda self, *a, **k: syncing.append(1) or real(self, *a, **k))
    for fused, expected_syncs in ((None, 2), (True, 0)):  # torch's default on a CPU, then what CUDA gets
        monkeypatch.setattr(train_mod, "fused_optimizer", lambda device, graphed=False, f=fused: f)
        syncing.clear()
        trainer = Trainer(config.train, config.model, data)
        assert trainer.scaler.is_enabled()
        for _ in range(2):
            loss, _ = trainer._train_step(torch.arange(16))
        assert len(syncing) == expected_syncs and torch.isfinite(loss)


class _FakeSession:
    """ONNX Runtime's InferenceSession as onnxruntime-gpu behaves on a box without TensorRT's libraries:
    it lists TensorRT, and creating a session with it fails."""

    made: list[tuple[list, dict]] = []

    def __init__(self, path: Any, options: Any = None, providers: Any = None, **kwargs: Any) -> None:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        _FakeSession.made.append((providers, kwargs))
        if "TensorrtExecutionProvider" in names:
            raise RuntimeError("TensorRT EP could not be created: libnvinfer.so.10: cannot open shared object file")
        self.names = names

    def get_providers(self) -> list[str]:
        return self.names

    def get_inputs(self) -> list[Any]:
        return [type("Arg", (), {"name": "x"})()]

    get_outputs = get_inputs


def test_a_listed_provider_that_does_not_load_is_never_asked_for(monkeypatch, tmp_path: Path) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    machine.ort_provider_loads.cache_clear()
    try:
        cuda = torch.device("cuda")
        (need, why), = unmet(SPECS["tensorrt"], cuda)
        assert need == "ort_tensorrt" and "listed but does not load" in why and "libnvinfer" in why
        assert unmet(SPECS["onnx_fp16"], cuda) == []  # the CUDA provider loads (in this fake)
        assert machine.ort_providers_that_load() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        _FakeSession.made.clear()
        variant = OrtVariant("onnx_fp32", "fp32", tmp_path / "model.onnx", cuda, threads=1, tensorrt=True)
        (providers, kwargs), = _FakeSession.made
        # TensorRT left out, the CUDA provider keeps strict fp32, and no silent retry on other options
        assert providers == [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
        assert kwargs == {"enable_fallback": 0} and variant.runtime == "CUDAExecutionProvider"
    finally:
        machine.ort_provider_loads.cache_clear()


def test_onnx_on_a_gpu_box_without_a_cuda_provider_is_labelled_cpu(monkeypatch, tmp_path: Path) -> None:
    """The project's GPU box has the CPU-only onnxruntime: its ONNX rows ran on the CPU and must say so.
    (The CPU package is faked, so the test means the same on a machine with onnxruntime-gpu and a GPU.)"""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    machine.ort_provider_loads.cache_clear()
    try:
        model = build_model(validate_config({}).model).eval()
        path = save_onnx(model, tmp_path / "model.onnx")
        variant = OrtVariant("onnx_fp32", "fp32", path, torch.device("cuda"), threads=1)
        assert variant.device.type == "cpu" and variant.runtime == "CPUExecutionProvider"
        (need, why), = unmet(SPECS["onnx_fp16"], torch.device("cuda"))
        assert need == "ort_cuda" and "CUDAExecutionProvider" in why
    finally:
        machine.ort_provider_loads.cache_clear()


class _FakeCudaMemory:
    """torch.cuda's allocator counters, for a CPU: `allocated` now, `peak` since the last reset."""

    def __init__(self) -> None:
        self.allocated = self.peak = 0

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: setattr(self, "peak",
                                                                                                 self.allocated))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)

    def call(self, needs: int) -> None:  # a forward pass: activations allocated, then freed
        self.peak = max(self.peak, self.allocated + needs)


def test_gpu_peak_memory_is_what_the_calls_need_not_what_is_alive(monkeypatch) -> None:
    memory = _FakeCudaMemory()
    memory.install(monkeypatch)

    class Variant:
        name, runtime, device = "v", "fake", torch.device("cuda")

        def __init__(self, weights_mb: int, activations_mb: int) -> None:
            memory.allocated += weights_mb * 10**6  # built earlier, alive while later ones are measured
            self.activations = activations_mb * 10**6

        def prepare(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def run(self, x: torch.Tensor) -> None:
            memory.call(self.activations)

        def sync(self) -> None:
            pass

    first, second = Variant(weights_mb=500, activations_mb=30), Variant(weights_mb=2000, activations_mb=30)
    peaks = []
    for variant in (first, second):
        meter = LatencyMeter(variant, 2)
        meter.start(warmup_runs=2)
        peaks.append(meter.peak_memory_mb)
    assert peaks == [30, 30]  # the build order (2.5 GB alive for the second) no longer shows


class _Broken(EagerVariant):
    """A variant that builds, then fails whenever it runs, as an engine build or a graph replay can."""

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_variant_failing_at_inference_loses_only_its_own_rows(checkpoint, tmp_path: Path, monkeypatch) -> None:
    real = bench_mod.build_variants

    def with_a_broken_one(*args: Any, **kwargs: Any) -> Any:
        variants, failed, skipped = real(*args, **kwargs)
        variants.append(_Broken("broken", load_best_model(checkpoint[0])[0], torch.device("cpu")))
        return variants, failed, skipped

    monkeypatch.setattr(bench_mod, "build_variants", with_a_broken_one)
    folder, data = checkpoint
    result = bench_mod.bench_checkpoint(folder, tmp_path, data.test_x, data.test_y, data.train_x, QUICK,
                                        device=torch.device("cpu"), threads=1)
    status = {row["variant"]: row for row in result["parity"]}
    assert status["broken"]["status"] == "inference_failed" and "out of memory" in status["broken"]["reason"]
    timed = {row["variant"] for row in result["bench"]}
    assert "broken" not in timed and set(FAST_VARIANTS) <= timed  # every other variant measured


def test_a_variant_failing_at_one_batch_size_keeps_its_other_rows(checkpoint) -> None:
    class FailsAtEight(EagerVariant):
        def run(self, x: torch.Tensor) -> torch.Tensor:
            if len(x) == 8:
                raise RuntimeError("CUDA out of memory")
            return super().run(x)

    model = load_best_model(checkpoint[0])[0]
    rows = measure_latencies([FailsAtEight("v", model, torch.device("cpu"))], [1, 8], QUICK)
    assert "p50_ms" in rows[("v", 1)] and "out of memory" in rows[("v", 8)]["error"]


def test_the_aoti_check_process_copies_the_parents_math_flags(monkeypatch, tmp_path: Path) -> None:
    """A fresh process starts with cuDNN's TF32 on; the parity check runs strict fp32, so the child must too.
    Read back from the child itself, with a stand-in for the package (compiling one is the slow test's job)."""
    script = export_mod.LOAD_IN_FRESH_PROCESS.replace("torch._inductor.aoti_load_package(sys.argv[1])",
                                                      "(lambda x: x * 2)")
    monkeypatch.setattr(export_mod, "LOAD_IN_FRESH_PROCESS", script)
    x = torch.randn(2, 3)
    with policy("fp32").backend_flags():
        _, logits, flags = export_mod.load_in_fresh_process(tmp_path / "model.pt2", torch.device("cpu"), x)
    assert flags == {"matmul_tf32": False, "cudnn_tf32": False, "matmul_precision": "highest"}
    assert torch.equal(logits, x * 2)
    with policy("tf32").backend_flags():
        _, _, flags = export_mod.load_in_fresh_process(tmp_path / "model.pt2", torch.device("cpu"), x)
    assert flags == {"matmul_tf32": True, "cudnn_tf32": True, "matmul_precision": "high"}


def test_compilers_and_toolkits_each_gpu_path_needs_are_checked(monkeypatch, tmp_path: Path) -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(machine, "cxx_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr(machine, "c_compiler", lambda: "/usr/bin/gcc")
    monkeypatch.setattr(machine, "python_headers", lambda: Path("/usr/include/python3/Python.h"))
    monkeypatch.setattr(machine, "cuda_toolkit", lambda: Path("/usr/local/cuda"))
    monkeypatch.setattr(machine, "libcuda_loads", lambda: True)
    assert unmet(SPECS["compiled"], cuda) == [] and unmet(SPECS["aoti"], cuda) == []
    monkeypatch.setattr(machine, "c_compiler", lambda: None)  # Triton's launcher is C
    assert "C compiler" in unmet(SPECS["compiled_cudagraphs"], cuda)[0][1]
    assert unmet(SPECS["compiled"], cpu) == []  # a CPU needs C++ alone
    monkeypatch.setattr(machine, "python_headers", lambda: None)
    assert "Python's headers" in unmet(SPECS["compiled"], cuda)[0][1]
    monkeypatch.setattr(machine, "cuda_toolkit", lambda: None)
    assert "CUDA toolkit" in unmet(SPECS["aoti"], cuda)[0][1] and unmet(SPECS["aoti"], cpu) == []
    monkeypatch.setattr(machine, "libcuda_loads", lambda: False)
    assert "libcuda" in unmet(SPECS["aoti"], cuda)[0][1]
    # the probes themselves, on this machine: torch's search for a toolkit, Python.h of this interpreter
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda.h").write_text("")
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert machine.cuda_toolkit() == tmp_path
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nothing"))
    assert machine.cuda_toolkit() is None


def test_an_export_never_takes_a_slot_a_pending_trial_could_use(tiny_raw, tmp_path: Path, monkeypatch) -> None:
    """Queued when its trial completes; launched once nothing is PENDING, or earlier only where the
    cluster has room for it beside every pending trial."""
    config = validate_config({**tiny_raw, "export": {"enabled": True, "cpus": 1}, "resources": {"cpus_per_trial": 1}})
    hook = export_hook.ExportCallback(config, SearchPlan.of(config))
    # An export cache that already holds files (the next test: else the first export goes alone).
    hook.experiment_dir = Location.of(tmp_path)
    (tmp_path / EXPORT_CACHE_DIR).mkdir()
    (tmp_path / EXPORT_CACHE_DIR / "onnx-abc.onnx").write_bytes(b"graph")
    launched = []
    for name in ("a", "b"):
        hook.queued.append((name, lambda n=name: launched.append(n) or f"ref-{n}", {"trial_id": name}, 0.0))
    trial = lambda status: type("Trial", (), {"status": status})()  # noqa: E731
    free = {"CPU": 1.0}
    monkeypatch.setattr(ray, "available_resources", lambda: free)
    hook.launch_ready([trial("RUNNING"), trial("PENDING")], force_check=True)
    assert launched == []  # the one free CPU is the pending trial's
    free["CPU"] = 2.0
    hook.launch_ready([trial("RUNNING"), trial("PENDING")])
    assert launched == []  # resources are read at most once a second
    hook.launch_ready([trial("RUNNING"), trial("PENDING")], force_check=True)
    assert launched == ["a"]  # room for the pending trial and one export, not two
    hook.launch_ready([trial("RUNNING"), trial("RUNNING")])
    assert launched == ["a", "b"] and set(hook.pending) == {"a", "b"}  # nothing pending: all go
    assert hook.pending["b"] == ("ref-b", {"trial_id": "b"}) and not hook.queued


def test_the_runs_first_export_goes_alone_while_the_export_cache_is_empty(tiny_raw, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """The others would each make the ONNX graph (or AOTInductor package) the first is about to leave
    in the cache. Once it is back, done or failed, the rest go; at the experiment's end they wait
    for it at most export.timeout_s. A run whose cache already holds files (a resume) waits for none."""
    done: set[str] = set()
    waited: list[float | None] = []

    def fake_wait(refs, timeout=None, **kwargs):
        waited.append(timeout)
        return [r for r in refs if r in done], [r for r in refs if r not in done]

    monkeypatch.setattr(ray, "wait", fake_wait)
    config = validate_config({**tiny_raw, "export": {"enabled": True, "cpus": 1, "timeout_s": 7}})
    running = [type("Trial", (), {"status": "RUNNING"})()]

    def hook_with(names: str, experiment: Path) -> tuple[export_hook.ExportCallback, list[str]]:
        hook = export_hook.ExportCallback(config, SearchPlan.of(config))
        hook.experiment_dir = Location.of(experiment)
        launched: list[str] = []
        for name in names:
            hook.queued.append((name, lambda n=name: launched.append(n) or f"ref-{n}", {"trial_id": name}, 0.0))
        for step in ("collect", "time_once", "write"):
            monkeypatch.setattr(hook, step, lambda *args, **kwargs: None)
        return hook, launched

    hook, launched = hook_with("abc", tmp_path / "fresh")
    hook.launch_ready(running)
    hook.launch_ready(running)
    assert launched == ["a"]  # out alone
    done.add("ref-a")
    hook.launch_ready(running)
    assert launched == ["a", "b", "c"]

    hook, launched = hook_with("de", tmp_path / "stuck")
    hook.launch_ready(running)
    assert launched == ["d"]
    waited.clear()
    hook.on_experiment_end(running)  # "ref-d" never returns
    assert launched == ["d", "e"] and waited[0] == 7

    cache = tmp_path / "resumed" / EXPORT_CACHE_DIR
    cache.mkdir(parents=True)
    (cache / "onnx-abc.onnx").write_bytes(b"graph")
    hook, launched = hook_with("fg", tmp_path / "resumed")
    hook.launch_ready(running)
    assert launched == ["f", "g"]


def test_a_shared_aoti_package_is_keyed_by_what_it_was_compiled_for(monkeypatch) -> None:
    """A package compiled on an sm_90 GPU must never be handed to an sm_80 one, nor a CPU's to a
    CPU with another vector instruction set, nor a batch-norm model's to one without."""
    from torch._inductor import cpu_vec_isa

    from cifar_tune.models import AlexNet

    bn, plain = AlexNet(), AlexNet(batch_norm=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    on_h200 = export_mod.aoti_key(torch.device("cuda"), bn)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "sm90" in on_h200 and export_mod.aoti_key(torch.device("cuda"), bn) != on_h200
    cpu = export_mod.aoti_key(torch.device("cpu"), bn)
    assert cpu != export_mod.aoti_key(torch.device("cpu"), plain) and "cpu" in cpu and "+" not in cpu
    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: "avx2")
    assert export_mod.aoti_key(torch.device("cpu"), bn) != cpu or "avx2" in cpu
    # Nor a package of one width to a model of another (a search over model.width), while other
    # weights of the same shapes share it.
    assert export_mod.aoti_key(torch.device("cpu"), AlexNet(width=0.5)) != export_mod.aoti_key(torch.device("cpu"), bn)
    torch.manual_seed(1)
    assert export_mod.aoti_key(torch.device("cpu"), AlexNet()) == export_mod.aoti_key(torch.device("cpu"), bn)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_aoti_graph_exports_for_cuda_over_its_whole_batch_range(batch_norm: bool, monkeypatch) -> None:
    """The first H200 run's defect: torch.export of the model on CUDA guards batch <= 65535 (aten's
    cuDNN batch-norm limit in eval), so the package's old range, up to 65536, failed there and not on
    a CPU. Fake CUDA tensors run the same export, guards included, without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cifar_tune.config import MAX_EXPORT_BATCH, ModelConfig

    with FakeTensorMode(), torch.device("cuda"):
        model = build_model(ModelConfig(batch_norm=batch_norm, width=0.25))
        example = torch.randn(2, 3, 32, 32)
    assert example.device.type == "cuda" and next(model.parameters()).device.type == "cuda"
    program = export_mod.export_program(model, example)
    (batch_range,) = program.range_constraints.values()
    assert (batch_range.lower, batch_range.upper) == (1, MAX_EXPORT_BATCH)
    if batch_norm:  # the guard is real: one more and the export fails as it did on the GPU
        monkeypatch.setattr(export_mod, "MAX_EXPORT_BATCH", MAX_EXPORT_BATCH + 1)
        with pytest.raises(Exception, match=r"Constraints violated \(batch\)"):
            export_mod.export_program(model, example)


def test_batch_sizes_over_what_an_exported_graph_serves_are_refused_by_name() -> None:
    from cifar_tune.config import MAX_EXPORT_BATCH

    with pytest.raises(Exception, match=r"batch_sizes[\s\S]*over 65535"):
        ExportConfig(batch_sizes=[1, MAX_EXPORT_BATCH + 1])
    assert ExportConfig(batch_sizes=[MAX_EXPORT_BATCH]).batch_sizes == [MAX_EXPORT_BATCH]


def test_a_child_that_crashes_loading_a_package_is_reported_with_its_signal_and_stack(monkeypatch, tmp_path) -> None:
    """On the H200 a CUDA model.pt2 killed its loading process (SIGSEGV) and the report said nothing:
    now the signal and the Python stack (faulthandler) are in the reason, and only that variant fails."""
    crash = "import os, signal\ndef load():\n    os.kill(os.getpid(), signal.SIGSEGV)\nload()\n"
    monkeypatch.setattr(export_mod, "LOAD_IN_FRESH_PROCESS", crash)
    with pytest.raises(export_mod.ExportError) as raised:
        export_mod.load_in_fresh_process(tmp_path / "model.pt2", torch.device("cpu"), torch.zeros(1, 3, 32, 32))
    message = str(raised.value)
    assert "model.pt2 does not load in a fresh process (killed by SIGSEGV)" in message
    assert "Segmentation fault" in message and "in load" in message  # faulthandler's stack names the frame
    assert export_mod.exit_status(3) == "exit 3" and export_mod.exit_status(-9) == "killed by SIGKILL"


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weights_are_7_bit_on_cpus_without_vnni(vnni: bool, monkeypatch, tmp_path: Path) -> None:
    """Without VNNI, ONNX Runtime's u8 x s8 kernels saturate int16 pair sums (onnx_int8 failed parity
    on an AVX2-only CPU); reduce_range is decided from this CPU's features at build time."""
    import onnxruntime.quantization as quantization
    import onnxruntime.quantization.shape_inference as shape_inference

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def quantize_static(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(export_mod, "int8_sums_saturate", lambda: not vnni)
    monkeypatch.setattr(quantization, "quantize_static", quantize_static)
    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda source, target: None)
    with pytest.raises(Stop):
        export_mod.save_onnx_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", torch.zeros(4, 3, 32, 32))
    assert seen["reduce_range"] is (not vnni) and seen["per_channel"] is True


def test_the_int8_weight_range_is_read_from_the_file_and_recorded(monkeypatch, tmp_path: Path) -> None:
    """7- and 8-bit INT8 models (each CPU kind builds one) differ in accuracy and speed; parity.json
    and bench.csv say which a row measured, read from the file, so a resumed experiment whose
    exports were made on both kinds of CPU keeps them apart."""
    model = build_model(ModelConfig(width=0.25)).eval()
    fp32 = save_onnx(model, tmp_path / "model.onnx")
    calibration = torch.randn(64, 3, 32, 32)
    bits = {}
    for saturate in (True, False):
        monkeypatch.setattr(export_mod, "int8_sums_saturate", lambda saturate=saturate: saturate)
        path = export_mod.save_onnx_int8(fp32, tmp_path / f"int8-{saturate}.onnx", calibration)
        bits[saturate] = export_mod.int8_weight_bits(path)
    assert bits == {True: 7, False: 8}
    with pytest.raises(ValueError, match="no INT8 weight tensors"):
        export_mod.int8_weight_bits(fp32)

    variant = OrtVariant("onnx_int8", "int8", path, torch.device("cpu"), threads=1)
    variant.int8_weight_bits = bits[False]
    images, labels = torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)
    with torch.no_grad():
        reference = model(images)
    row = bench_mod.parity(variant, images, labels, reference, ExportConfig())
    assert row["int8_weight_bits"] == 8
    eager = bench_mod.parity(EagerVariant("eager_fp32", model, torch.device("cpu")), images, labels, reference,
                             ExportConfig())
    assert eager["int8_weight_bits"] is None


def test_int8_sums_saturate_only_on_x86_without_vnni(monkeypatch) -> None:
    """Decided at run time, from the architecture and the CPU's int8 dot-product instructions."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert machine.int8_sums_saturate() is False  # not x86: no 7-bit weights whatever the flags
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert machine.int8_sums_saturate() is False  # AVX512-VNNI
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    for flags, expected in (("fpu avx avx2 fma", True), ("fpu avx avx2 avx_vnni", False)):

        class CpuInfo:  # /proc/cpuinfo of a CPU with these flags
            def __init__(self, path: str) -> None:
                pass

            def read_text(self, text: str = f"flags\t\t: {flags}\n") -> str:
                return text

        monkeypatch.setattr(machine, "Path", CpuInfo)
        assert machine.int8_sums_saturate() is expected, flags
