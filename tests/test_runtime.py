"""Presets, device and precision choice, seeding, timing."""

from __future__ import annotations

import pytest
import torch

from llmlab import runtime
from llmlab.presets import LAB_PRESETS, PRESET_NAMES, lab_settings


def test_preset_from_environment(monkeypatch):
    monkeypatch.setenv("LLMLAB_PRESET", "CPU ")
    assert runtime.preset_name() == "cpu"


def test_default_preset_follows_cuda(monkeypatch):
    monkeypatch.delenv("LLMLAB_PRESET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.preset_name() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.preset_name() == "gpu"


def test_unknown_preset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LLMLAB_PRESET", "fast")
    with pytest.raises(ValueError) as error:
        runtime.preset_name()
    message = str(error.value)
    assert message.startswith("LLMLAB_PRESET: unknown preset 'fast'; valid presets: smoke, cpu, gpu")
    assert "\n" not in message


def test_lab_settings_are_a_copy_and_refuse_unknown_names():
    settings = lab_settings("02_attention", "cpu")
    settings["train_steps"] = -1
    assert LAB_PRESETS["02_attention"]["cpu"]["train_steps"] != -1
    with pytest.raises(ValueError, match="unknown preset 'huge'; valid presets: smoke, cpu, gpu"):
        lab_settings("02_attention", "huge")
    with pytest.raises(KeyError, match="no presets for lab '99_missing'"):
        lab_settings("99_missing", "cpu")


def test_every_lab_defines_all_presets_with_the_same_keys():
    for lab, presets in LAB_PRESETS.items():
        assert set(presets) == set(PRESET_NAMES), lab
        keys = {name: set(settings) for name, settings in presets.items()}
        assert keys["smoke"] == keys["cpu"] == keys["gpu"], f"{lab}: presets differ in their keys"


def test_mps_only_when_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.delenv("LLMLAB_ALLOW_MPS", raising=False)
    assert runtime.pick_device().type == "cpu"
    monkeypatch.setenv("LLMLAB_ALLOW_MPS", "1")
    assert runtime.pick_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.pick_device().type == "cuda"


@pytest.mark.parametrize(
    "capability, dtype, scaling",
    [((7, 5), torch.float16, True), ((8, 0), torch.bfloat16, False), ((9, 0), torch.bfloat16, False), ((6, 1), torch.float16, True)],
)
def test_precision_by_compute_capability(monkeypatch, capability, dtype, scaling):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision = runtime.pick_precision(torch.device("cuda"))
    assert precision.dtype is dtype and precision.needs_loss_scaling is scaling


def test_cpu_runs_in_full_precision_without_scaler():
    precision = runtime.pick_precision(torch.device("cpu"))
    assert precision.name == "fp32" and not precision.needs_loss_scaling
    assert not runtime.grad_scaler(torch.device("cpu"), precision).is_enabled()


def test_seeding_repeats_exactly():
    first = runtime.seed_everything(3)
    a = (torch.randn(5), torch.randint(0, 100, (5,), generator=first))
    second = runtime.seed_everything(3)
    b = (torch.randn(5), torch.randint(0, 100, (5,), generator=second))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_start_lab_prints_what_it_chose(monkeypatch, capsys):
    monkeypatch.setenv("LLMLAB_PRESET", "smoke")
    settings, run = runtime.start_lab("02_attention")
    printed = capsys.readouterr().out
    assert settings == LAB_PRESETS["02_attention"]["smoke"]
    assert "preset smoke" in printed and "torch" in printed and "versions:" in printed
    assert run.preset == "smoke" and "preset 'smoke' on cpu: " in run.summary()
    with pytest.raises(KeyError, match="no presets for lab"):
        runtime.start_lab("99_missing")


def test_machine_description_names_the_processor_or_the_gpu(monkeypatch):
    description = runtime.describe_machine(torch.device("cpu"))
    assert description.startswith("cpu: ") and f"{torch.get_num_threads()} threads" in description and "cores" in description
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert runtime.describe_machine(torch.device("cuda")) == "cuda: Tesla T4 (compute capability 7.5)"


def test_measure_seconds_reports_a_median():
    calls = []
    seconds = runtime.measure_seconds(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and 0 <= seconds < 0.1


def test_shown_path_hides_where_the_runs_folder_lives(tmp_path, monkeypatch):
    from llmlab.runtime import shown_path

    monkeypatch.setenv("LLMLAB_RUNS", str(tmp_path / "drive"))
    assert shown_path(tmp_path / "drive" / "03_pretraining" / "pretraining-cpu.safetensors") \
        == "$LLMLAB_RUNS/03_pretraining/pretraining-cpu.safetensors"
    monkeypatch.delenv("LLMLAB_RUNS")
    monkeypatch.chdir(tmp_path)
    assert shown_path((tmp_path / "runs" / "04_fine_tuning" / "frozen").resolve()) == "runs/04_fine_tuning/frozen"
    assert shown_path(tmp_path / "elsewhere.txt") == str(tmp_path / "elsewhere.txt")  # outside the runs folder: as given
