"""Multi-run workflows through an executor: the same jobs run here one after another, N at a time as local
processes, and through submitit's local executor (SLURM's path, run here); the results are equal, no two jobs write
one file, a killed run resumes with nothing lost, and the SLURM scripts carry what was asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from em_trainer.cli import main
from em_trainer.workflows.executors import ExecutorArguments, ExecutorError, Job, sbatch_script

from .training_cli import ENV

# One thread per process for every executor, as CI's workers have: without a fixed OMP_NUM_THREADS the local
# executors give each of N jobs 1/N of the cores, and a float sum over another number of threads may differ in its
# last bits (docs/scale.md).
ENV = {**ENV, "OMP_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[1]
PAPER_PLAN = ROOT / "recipes/configs/qwen2.5-math-7b/study_paper_plan.yaml"
TINY_TRAIN = {
    "responses_per_step": 4, "num_generations": 4, "per_device_train_batch_size": 4, "max_completion_length": 8,
    "learning_rate": 1.0e-3, "gradient_checkpointing": False, "logging_steps": 1, "disable_tqdm": True,
}  # fmt: skip


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "em_trainer.cli", *args]


# ------------------------------------------------------------------------------------------------ settings, scripts
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor": "ray"}, "use one of serial, local, slurm, submitit_local"),
        ({"max_parallel": 0}, "--max_parallel 0: must be >= 1"),
        ({"slurm_partition": "gpu"}, "--slurm_partition would have no effect with --executor local"),
        ({"executor": "slurm", "slurm_additional_parameters": ["reservation"]}, "write key=value"),
    ],
)
def test_executor_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ExecutorError, match=message):
        ExecutorArguments(**kwargs)


def test_sweep_and_study_refuse_bad_executor_flags_in_one_line(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 1\n")
    assert main(["sweep", "--train_config", str(config), "--slurm_partition", "gpu"]) == 2
    assert main(["study", "--config", str(PAPER_PLAN), "--executor", "local", "--dry_run"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 2 and all("would have no effect with --executor local" in e for e in errors), errors


def test_sbatch_script_is_one_throttled_array_with_every_resource_asked_for(tmp_path):
    args = ExecutorArguments(
        executor="slurm", max_parallel=16, gpus_per_node=8, cpus_per_task=64, mem_gb=900, timeout_min=720,
        slurm_partition="gpu", slurm_account="em", slurm_setup=["source venv/bin/activate"],
        slurm_additional_parameters=["reservation=paper"],
    )  # fmt: skip
    jobs = [Job(f"j{i}", ("study", "--job", f"a:{i}")) for i in range(192)]
    script = sbatch_script(jobs, args, tmp_path / "logs")
    for line in ["#SBATCH --array=0-191%16", "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64",
                 "#SBATCH --partition=gpu", "#SBATCH --account=em", "#SBATCH --time=720",
                 "#SBATCH --reservation=paper", "#SBATCH --mem=921600MB", "source venv/bin/activate"]:  # fmt: skip
        assert line in script.splitlines(), line
    assert "-m submitit.core._submit" in script and str(tmp_path / "logs") in script


def test_paper_sized_study_dry_run_lists_192_jobs_and_the_slurm_request(capsys):
    assert main(["study", "--config", str(PAPER_PLAN), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "12 training arm(s) x 16 seed(s)" in out and "192 job(s), executor slurm, 16 at a time" in out
    assert out.count("--job em_") == 192 and "--launcher 'accelerate launch --num_processes 8'" in out
    assert "--prepare" in out and "#SBATCH --array=0-191%16" in out and "#SBATCH --gpus-per-node=8" in out


def test_study_yaml_old_quick_block_still_works_with_one_deprecation_line(tmp_path, capsys):
    from em_trainer.workflows.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"seeds": 4, "arms": {"base": {"kind": "decode"}}, "quick": {"seeds": 2}}))
    assert load_study(path, quick=True).seeds == 2 and load_study(path).seeds == 4
    assert capsys.readouterr().err.count("deprecated: the study YAML's `quick:` block") == 2
    # A flag wins over the quick variant; an unknown key in the variant is named.
    assert load_study(path, quick=True, argv=["--seeds", "3"]).seeds == 3
    path.write_text(yaml.safe_dump({"arms": {}, "quick_variant": {"colour": 1}}))
    with pytest.raises(ValueError, match=r"quick_variant: unknown key\(s\) \['colour'\]"):
        load_study(path, quick=True)


# ---------------------------------------------------------------------------------------------------- real jobs
@pytest.fixture(scope="module")
def tiny_study(tiny_model_dir, tmp_path_factory) -> Path:
    """A study on the tiny model: base + two training arms (one with its own train_args), one seed, steps 0 and 2:
    two training jobs, so that two run at a time. The arms' config names another model, as a config written for a
    standalone run does: the study's model is the one trained."""
    folder = tmp_path_factory.mktemp("tiny-study")
    (folder / "em_ft.yaml").write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", **TINY_TRAIN}))
    study = {
        "model": tiny_model_dir, "seeds": 1, "steps": [0, 2], "test_size": 2, "pool_size": 2,
        "select": {"k": 2, "max_new_tokens": 4},
        "measure": {"max_new_tokens": 4, "entropy_problems": 1, "entropy_samples": 2, "batch_size": 2},
        "arms": {"base": {"kind": "decode"}, "em_ft": {"kind": "train", "config": "em_ft.yaml"},
                 "em_ft_lr": {"kind": "train", "config": "em_ft.yaml", "train_args": ["--learning_rate", "1e-2"]}},
    }  # fmt: skip
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    return folder / "study.yaml"


def run_study(config: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = cli("study", "--config", str(config), "--output_dir", str(out), *flags)
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(out: Path) -> list[dict]:
    found = json.loads((out / "results.json").read_text())["records"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in found]


@pytest.fixture(scope="module")
def serial_study(tiny_study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "study"
    run_study(tiny_study, out, "--executor", "serial")
    return out


@pytest.mark.slow
def test_study_through_submitit_local_executor_equals_the_serial_run(tiny_study, serial_study, tiny_model_dir,
                                                                    tmp_path):
    """Cost (about 80 s): the study's jobs pickled and run through submitit's local executor (SLURM's path), each its
    own process that imports PyTorch and TRL, compared record for record with the serial run."""
    out = tmp_path / "study"
    result = run_study(tiny_study, out, "--executor", "submitit_local", "--max_parallel", "2")
    assert records(out) == records(serial_study) and len(records(out)) == 1 * (1 + 2 * 2)
    assert result.stdout.count("[jobs] submitted") == 1 + 2, "the preparation, then one job per arm and seed"
    for arm in ("em_ft", "em_ft_lr"):
        identity = json.loads((out / "runs" / arm / "seed-0" / "run_identity.json").read_text())
        assert identity["script"]["model"] == str(tiny_model_dir), "the study's model, not the arm config's"
    prepared = "".join(p.read_text() for p in (out / "job_logs").rglob("*_log.out"))  # the preparation's job log
    assert f"arms.em_ft: trains {tiny_model_dir} (the study's model), not smollm2-135m-instruct" in prepared
    # Each job wrote only files of its own: one measurement file and one wall-time file per (arm, seed) (and held
    # its own lock file while it ran).
    jobs = sorted(p.name for p in (out / "jobs").iterdir() if p.suffix != ".lock")
    names = [f"{arm}-seed{seed}" for arm in ("em_ft", "em_ft_lr") for seed in (0,)]
    assert jobs == sorted([f"{n}.jsonl" for n in names] + [f"{n}.wall.json" for n in names])
    for name in names:
        lines = [json.loads(line) for line in (out / "jobs" / f"{name}.jsonl").read_text().splitlines()]
        assert [(r["arm"], r["seed"], r["step"]) for r in lines] == [(name.rsplit("-", 1)[0], int(name[-1]), 2)]
    # A rerun trains and measures nothing.
    again = run_study(tiny_study, out, "--executor", "submitit_local", "--max_parallel", "2")
    assert "[study] training" not in again.stdout + again.stderr and records(out) == records(serial_study)


@pytest.mark.slow
def test_study_killed_with_its_jobs_resumes_to_the_serial_results(tiny_study, serial_study, tmp_path):
    """`--executor local`, two jobs at a time: SIGKILL to the study and every job once the first job has measured;
    the same command then finishes, measures nothing twice, and gives the serial run's records."""
    out = tmp_path / "study"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = cli("study", "--config", str(tiny_study), "--output_dir", str(out), "--executor", "local",
                  "--max_parallel", "2")  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                               cwd=out.parent, start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while not any((out / "jobs").glob("*.jsonl")):
        assert process.poll() is None and time.time() < deadline, "the study ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {p.name: p.read_text() for p in (out / "jobs").glob("*.jsonl")}
    assert not (out / "results.json").exists()
    run_study(tiny_study, out, "--executor", "local", "--max_parallel", "2")
    assert records(out) == records(serial_study)
    for name, text in done_before.items():
        kept = (out / "jobs" / name).read_text()
        assert kept.startswith(text.rstrip("\n").rsplit("\n", 1)[0]) and len(kept.splitlines()) == 1, name


@pytest.mark.slow
def test_sweep_through_submitit_local_executor_equals_the_serial_sweep(tiny_model_dir, tmp_path):
    """Cost (about 60 s): a sweep run serially and through submitit's local executor (SLURM's path), every run its own
    process, compared row for row."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_model_dir, **TINY_TRAIN, "max_steps": 2, "report_to": "none"}))
    rows = {}
    for executor in ("serial", "submitit_local"):
        out = tmp_path / executor
        command = cli("sweep", "--train_config", str(config), "--seeds", "1", "--output_dir", str(out),
                      "--executor", executor, "--max_parallel", "2")  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[executor] = json.loads((out / "sweep_summary.json").read_text())["runs"]
    assert [r["loss_by_step"] for r in rows["submitit_local"]] == [r["loss_by_step"] for r in rows["serial"]]
    assert len(rows["serial"]) == 1


def test_local_executor_gives_each_job_its_own_gpus_from_the_visible_ones(tmp_path, monkeypatch):
    """Before, every local job inherited all visible devices (so all trained on GPU 0). A faked device list: four
    GPUs, two per job, four jobs that record their devices and their overlap with the jobs running beside them."""
    from em_trainer.workflows.executors import run_jobs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7,9")
    # Each job holds its devices for a moment and marks them busy in a file; a device marked twice is shared.
    code = ("import os, sys, time, pathlib; d = os.environ['CUDA_VISIBLE_DEVICES']; busy = pathlib.Path(sys.argv[1]) "
            "/ ('busy-' + d); assert not busy.exists(), 'shared ' + d; busy.touch(); time.sleep(0.5); "
            "busy.unlink(); print('devices', d)")  # fmt: skip
    jobs = [Job(f"arm/{i}", (str(tmp_path),), program=("-c", code)) for i in range(4)]
    args = ExecutorArguments(executor="local", max_parallel=4, gpus_per_job=2)
    run_jobs(jobs, args, tmp_path / "logs", log=lambda *a, **k: None)
    seen = sorted((tmp_path / "logs" / f"arm_{i}.log").read_text().split()[-1] for i in range(4))
    assert seen == ["3,5", "3,5", "7,9", "7,9"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    quiet = lambda *a, **k: None  # noqa: E731
    run_jobs(jobs[:2], ExecutorArguments(executor="local", max_parallel=2), tmp_path / "auto", log=quiet)
    assert sorted((tmp_path / "auto" / f"arm_{i}.log").read_text().split()[-1] for i in range(2)) == ["0", "1"]
    with pytest.raises(ExecutorError, match="only 2 GPU"):
        run_jobs(jobs, ExecutorArguments(executor="local", gpus_per_job=3), tmp_path / "x", log=print)
    with pytest.raises(ExecutorError, match="--gpus_per_job would have no effect"):
        ExecutorArguments(executor="slurm", gpus_per_job=1)
