"""The demo's bookkeeping: spread over seeds, targets on the mean, and packaging an adapter with its model card."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rl.demo import FIGURES, demo_config, model_card, ship, spread, summarise, warm_config


def figures(**values: float | bool | None) -> dict:
    base = dict.fromkeys(FIGURES, 0.0) | {"readme_parabola": False}
    return base | values


def test_spread_is_mean_sample_std_and_range_of_what_was_scored():
    assert spread([0.1, 0.375, 0.2, None]) == pytest.approx(
        {"mean": 0.225, "std": 0.13919, "min": 0.1, "max": 0.375, "n": 3}, abs=1e-5
    )
    assert spread([None, None]) == {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    assert spread([0.5])["std"] == 0.0


def test_targets_are_judged_on_the_mean_and_the_parabola_on_every_seed():
    results = [
        {
            "seed": 0,
            "after": figures(made_image=0.9, distinct_chart_code=0.7, numbers_in_chart=None, readme_parabola=True),
        },
        {
            "seed": 1,
            "after": figures(made_image=0.8, distinct_chart_code=0.95, numbers_in_chart=0.5, readme_parabola=False),
        },
    ]
    summary = summarise(figures(made_image=0.07), results)
    assert summary["after"]["made_image"]["mean"] == pytest.approx(0.85)
    assert summary["warm_start"]["made_image"]["n"] == 0  # no warm start recorded: nothing to spread
    assert summary["targets"]["made_image"]["met"] and summary["targets"]["distinct_chart_code"]["met"]
    assert summary["targets"]["numbers_in_chart"] == {"target": 0.5, "mean": 0.5, "met": True}  # one seed scored
    assert summary["targets"]["readme_parabola"]["met"] is False  # seed 1 gave no parabola


def test_ship_writes_half_precision_weights_config_and_a_model_card(tmp_path):
    source = tmp_path / "run" / "adapter"
    source.mkdir(parents=True)
    save_file(
        {"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 16)},
        str(source / "adapter_model.safetensors"),
    )
    (source / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    cfg = vars(demo_config(tmp_path / "run", 45.0, seed=0, steps=40, init_adapter=str(tmp_path / "warm")))
    warm = vars(warm_config(tmp_path / "warm", 0))
    result = {"seed": 0, "adapter": str(source), "steps": 40, "train_minutes": 31.5, "config": cfg,
              "warm_start": figures(made_image=0.6) | {"sft_minutes": 26.0}, "warm_config": warm,
              "after": figures(made_image=0.85)}  # fmt: skip
    summary = summarise(figures(made_image=0.07), [result]) | {"seeds": [0, 1, 2], "warm_seed": 0}
    dest = tmp_path / "pkg" / "smollm2-llmi"
    ship(result, summary, dest)
    weights = load_file(str(dest / "adapter_model.safetensors"))
    assert [w.dtype for w in weights.values()] == [torch.float16]
    shipped_config = json.loads((dest / "adapter_config.json").read_text())
    assert shipped_config["r"] == 8
    assert shipped_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (dest / "README.md").read_text()
    assert card == model_card(result, summary)
    for needed in (
        "SmolLM2-135M",
        "GRPO",
        "seed 0",
        "40 optimizer steps",
        "| made_image | 7.0% | 60.0% | 85.0% |",
        "Warm start (`rl.warmstart`, 26.0 min, seed 0, shared by all seeds)",
        "seeds 0, 1, 2",
        "advantages not divided by the group's reward std (Dr. GRPO)",
    ):
        assert needed in card
    assert not (dest.parent / "smollm2-llmi.tmp").exists()
