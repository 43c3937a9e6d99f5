"""The forgetting gate, end to end on the tiny model: a deliberately destructive fine-tune trips it, a harmless
one passes it. Both train the same narrow task (every answer is the same word, repeated) with the same LoRA
targets; only the learning rate and the number of steps differ.

Why the LoRA also adapts lm_head, on an untied copy of the tiny model: the random model's output embeddings have
norm ~0.16 and the final RMSNorm (not trained by LoRA) fixes the hidden state's norm, so with the projections
alone no fine-tune can move any logit by more than about one nat and WikiText perplexity barely moves whatever the
training does. Adapting the output layer lifts that bound, as a real model's large-norm embeddings do. The copy
is untied (lm_head = a clone of the embeddings, so its outputs equal the tiny model's) because a LoRA on a tied
lm_head is not usable with lm-eval: its HFLM calls tie_weights(), which fails on the wrapped layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.io.models import load_adapter_model, load_base_model, load_tokenizer
from tasks.lib.config import GateConfig, RunConfig, load_config
from tasks.lib.config.benchmark_names import HEADLINE
from tasks.lib.dataset.prepare import prepare_dataset
from tasks.lib.gate.decision import decide
from tasks.lib.general_benchmarks.benchmark_scoring import run_benchmarks
from tasks.lib.training.trainer import train_adapter
from tests.conftest import write_tiny_config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
NARROW_TASK = {
    "data.completion_template": " ".join(["positive"] * 16),
    "lora.target_modules": TARGETS,
    "train.lr_scheduler": "constant",
}
# The gate's shipped thresholds. No task scores are computed here, so the task row is not required to improve.
GATE = GateConfig(require_task_improvement=False)


@pytest.fixture(scope="module", autouse=True)
def _fast_cpu():
    # One intra-op thread: the tiny model's matmuls are microseconds and thread hand-offs on shared cores
    # dominate. lm-eval's collect_env report (pip/nvidia-smi subprocesses, ~5 s a call) is not read here.
    import lm_eval.evaluator

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def untied_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with lm_head stored as its own copy of the embeddings: same weights, same outputs."""
    out = tmp_path_factory.mktemp("tiny-untied")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)

    untied, tied = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    ids = torch.arange(32).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(untied(ids).logits, tied(ids).logits)
    return out


def _config(root: Path, model_dir: Path, benchmark_dir: Path, overrides: dict) -> RunConfig:
    root.mkdir(parents=True, exist_ok=True)
    return load_config(write_tiny_config(root, model_dir, benchmark_dir, {**NARROW_TASK, **overrides}))


def _scores(model, config: RunConfig) -> dict[str, dict[str, float]]:
    bench = config.forgetting
    tokenizer = load_tokenizer(config.model)
    data_dir = Path(bench.data_dir)
    return run_benchmarks(
        model,
        tokenizer,
        list(bench.benchmarks),
        data_dir,
        bench.limit,
        bench.batch_size,
        perplexity_limit=bench.perplexity_limit,
    )


@pytest.fixture(scope="module")
def base_scores(tmp_path_factory, untied_model_dir: Path, benchmark_data_dir: Path) -> dict:
    """The 4-bit base the adapters train on, scored once for both tests."""
    config = _config(tmp_path_factory.mktemp("base"), untied_model_dir, benchmark_data_dir, {})
    return _scores(load_base_model(config.model, config.quantization), config)


def _fine_tune(root: Path, model_dir: Path, benchmark_dir: Path, overrides: dict):
    config = _config(root, model_dir, benchmark_dir, overrides)
    tokenizer = load_tokenizer(config.model)
    data_dir = Path(config.data.processed_dir)
    stats = prepare_dataset(config, tokenizer, data_dir, root / "stats.json")
    assert set(stats["label_balance"]["train"]) == {NARROW_TASK["data.completion_template"]}
    result = train_adapter(
        config, lambda: load_base_model(config.model, config.quantization), tokenizer, data_dir, root
    )
    model = load_adapter_model(config, str(result.adapter_dir))  # what the pipeline's forgetting step scores
    return config, result, model


def test_destructive_fine_tune_trips_the_gate(
    tmp_path: Path, untied_model_dir: Path, benchmark_data_dir: Path, base_scores: dict
) -> None:
    overrides = {"train.learning_rate": 3e-2, "train.max_steps": 30, "train.eval_steps": 10, "train.save_steps": 10}
    config, result, model = _fine_tune(tmp_path, untied_model_dir, benchmark_data_dir, overrides)
    assert result.best_eval_loss < result.first_eval_loss  # it did learn the narrow task

    tuned = _scores(model, config)
    gate = decide(base_scores, tuned, GATE)

    assert not gate.passed and gate.verdict == "fail"
    failed = {row.name: row for row in gate.failures()}
    assert "wikitext" in failed and failed["wikitext"].kind == "perplexity"
    wikitext = failed["wikitext"]
    assert wikitext.verdict == "fail" and "forgetting shown" in wikitext.reason
    assert math.isfinite(wikitext.tuned) and wikitext.delta > 100 * GATE.max_perplexity_increase
    assert wikitext.ci_low > 0 and wikitext.n >= 10
    # Collapsing onto one word also hurts the other perplexity lm-eval reports (LAMBADA's, not gated).
    assert tuned["lambada"].values["perplexity"] > base_scores["lambada"].values["perplexity"]


def test_harmless_fine_tune_passes_the_gate(
    tmp_path: Path, untied_model_dir: Path, benchmark_data_dir: Path, base_scores: dict
) -> None:
    overrides = {"train.learning_rate": 1e-6, "train.max_steps": 2, "train.eval_steps": 2, "train.save_steps": 2}
    config, result, model = _fine_tune(tmp_path, untied_model_dir, benchmark_data_dir, overrides)
    # A real (tiny) update: LoRA's B matrices start at zero and no longer are.
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert any(value.abs().sum() > 0 for name, value in weights.items() if "lora_B" in name)

    tuned = _scores(model, config)
    gate = decide(base_scores, tuned, GATE)

    # A handful of items per benchmark cannot show non-inferiority, but nothing may be called forgetting.
    assert gate.verdict != "fail", [row.reason for row in gate.failures()]
    assert {row.name for row in gate.rows} == set(config.forgetting.benchmarks)
    assert all(row.verdict != "fail" and row.metric == HEADLINE[row.name] for row in gate.rows)
    assert {row.n for row in gate.rows if row.kind == "accuracy"} == {config.forgetting.limit}
