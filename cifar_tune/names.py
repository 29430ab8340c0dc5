"""Every name cifar-tune writes or reads: files, folders, metric lists and trial statuses.

One place, so the run, resume, export, bench and analysis code cannot drift apart, and a reader
learns an experiment folder's layout here:

    <storage_path>/<name>/            the experiment (EXPERIMENT files below, plus Tune's own state)
        <trial>/checkpoint_*/         STATE_FILE, BEST_FILE (the last one also PREDICTIONS_FILE)
        <trial>/export/               EXPORT files, PARITY_FILE, BENCH_FILE
        analysis/                     report.md, plots, CSVs
        timing.csv, timing_rounds.csv isolated training speed per precision (`cifar-tune time`)
        extend-<k>/                   an experiment of more seeds (`cifar-tune extend`), same layout
"""

from __future__ import annotations

# --------------------------------------------------------------------------- experiment folder
CONFIG_FILE = "cifar_tune_config.yaml"  # the validated config, read by `cifar-tune resume`
RESULTS_FILE = "results.csv"  # one row per trial
BENCH_CSV = "bench.csv"  # one row per trial x variant x batch size
EXPORTS_JSON = "exports.json"  # per trial: ok / failed / timeout, with the reason
TIMING_CSV = "timing.csv"  # per precision: median img/s with the device to itself, speedup over fp32
TIMING_ROUNDS_CSV = "timing_rounds.csv"  # every timed block of every `cifar-tune time`, appended
ANALYSIS_DIR = "analysis"  # what `cifar-tune analyze` writes, unless --out
EXTENSION_PREFIX = "extend-"  # <experiment>/extend-<k>/: more seeds added by `cifar-tune extend`
TRIAL_PARAMS_FILE = "params.json"  # Tune's: the trial's config
TRIAL_RESULT_FILE = "result.json"  # Tune's: one JSON line per reported epoch
TRIAL_ERROR_FILE = "error.txt"  # Tune's: the traceback of a failed trial
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # Tune's: trial statuses

# --------------------------------------------------------------------------- checkpoints
STATE_FILE = "state.pt"  # everything needed to resume a trial
BEST_FILE = "best_model.pt"  # the best-validation weights, for testing and export
PREDICTIONS_FILE = "test_predictions.npy"  # in the last checkpoint: predicted and true class per test image
CHECKPOINT_GLOB = "checkpoint_*"

# --------------------------------------------------------------------------- exports
EXPORT_DIR = "export"
TORCHSCRIPT_FILE = "model.pt"
AOTI_FILE = "model.pt2"  # torch.export + AOTInductor package
AOTI_WEIGHTS_FILE = "model.aoti_weights.pt"  # a trial's weights for the experiment's shared AOTInductor package
EXPORT_CACHE_DIR = "export_cache"  # <experiment>/export_cache/: files trials share (export.aoti_key, onnx_key)
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model.fp16.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"
BENCH_FILE = "bench.json"
REFERENCE_VARIANT = "eager_fp32"  # what every speedup and parity check is measured against
# The variants themselves (names, order, needs) are declared in cifar_tune.variants.

# --------------------------------------------------------------------------- metrics
# Reported by a trial after every epoch; `tune.metric` must be one of them.
EPOCH_METRICS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc", "best_epoch",
    "lr", "epoch_time_s", "train_images_per_s", "training_time_s",
)
# Reported with an epoch where the device has an energy counter (cifar_tune.energy).
ENERGY_METRICS = ("energy_j", "images_per_j")
# Reported once, after the last epoch.
TEST_METRICS = ("test_loss", "test_acc", "test_time_s", "energy_source")
# A trial's final numbers, as the trial table carries them.
FINAL_METRICS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "test_time_s", "training_time_s")
# The columns of results.csv after the searched keys (documented in docs/training.md).
RESULTS_COLUMNS = ("best_val_acc", "best_epoch", "test_acc", "test_loss", "training_time_s", "trials_sharing_device",
                   "epochs_done", "status", "error", "device", "trial_id", "path", "node_ip", "node_id", "hostname")
SHARING_METRIC = "trials_sharing_device"  # per epoch: the most trials on this trial's device during it
CHECKPOINT_SCORE = "val_acc"  # the checkpoint Tune keeps besides the latest one

# --------------------------------------------------------------------------- trial statuses
# One set of words for results.csv, the printed table and the analysis.
TERMINATED = "TERMINATED"  # ran every epoch and was tested
STOPPED = "STOPPED"  # ended early by the scheduler (ASHA), before the test pass
ERROR = "ERROR"  # raised; the `error` column holds the last line of the traceback
UNFINISHED = "UNFINISHED"  # pending, running or paused when the experiment stopped: resume it
TRIAL_STATUSES = (TERMINATED, STOPPED, ERROR, UNFINISHED)
