"""QLoRA training on the tiny model: the loss falls, the adapter is a loadable PEFT folder, the base really is
4-bit while it trains, only the LoRA weights train, packing keeps attention inside each row, and a run that
blows up stops with TrainingDivergedError leaving only good checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from tasks.io.models import load_base_model, load_tokenizer
from tasks.lib.config import RunConfig, load_config
from tasks.lib.dataset.prepare import prepare_dataset
from tasks.lib.dataset.tokenization import IGNORE_INDEX
from tasks.lib.modeling.packed_attention import NAME
from tasks.lib.training.callbacks import TrainingDivergedError
from tasks.lib.training.collators import build_collator, shared_prompt_prefix
from tasks.lib.training.trainer import TrainResult, read_token_split, train_adapter
from tests.conftest import write_tiny_config

# Decoder-layer projections of a Llama block; `all-linear` adapts all of them, never lm_head.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The tiny model's matmuls are microseconds: with 2 intra-op threads on shared cores, thread hand-offs
    # dominate (100x slower here). One thread keeps these tests fast; the setting is restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Run:
    config: RunConfig
    tokenizer: Any
    data_dir: Path
    run_dir: Path
    model: PreTrainedModel | None = None  # the base as loaded; get_peft_model injects LoRA layers into it
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # taken by the metrics sink while training
    result: TrainResult | None = None


def _setup(root: Path, tiny_model_dir: Path, overrides: dict | None = None) -> Run:
    root.mkdir(parents=True, exist_ok=True)
    # The benchmark folder is only written into the config; training never reads it.
    config = load_config(write_tiny_config(root, tiny_model_dir, root / "benchmarks-unused", overrides))
    tokenizer = load_tokenizer(config.model)
    data_dir = Path(config.data.processed_dir)
    prepare_dataset(config, tokenizer, data_dir, root / "stats.json")
    return Run(config, tokenizer, data_dir, root / "run")


def _snapshot(model: PreTrainedModel) -> dict[str, Any]:
    lora_layers = {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    return {
        "training": model.training,
        "lora_base_layers": {name: type(module.base_layer) for name, module in lora_layers.items()},
        "linear4bit": [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)],
        "weight_dtypes": {name: module.base_layer.weight.dtype for name, module in lora_layers.items()},
    }


def _train(run: Run, load: Callable[[], PreTrainedModel] | None = None) -> Run:
    def load_base() -> PreTrainedModel:
        run.model = (load or (lambda: load_base_model(run.config.model, run.config.quantization)))()
        return run.model

    def sink(metrics, step) -> None:
        if "loss" in metrics:  # a training-step log: called from inside Trainer.train
            run.snapshots.append(_snapshot(run.model))

    run.result = train_adapter(run.config, load_base, run.tokenizer, run.data_dir, run.run_dir, metrics_sink=sink)
    return run


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    """The tiny config as written by conftest: QLoRA (4-bit NF4 base), 12 steps, packing on."""
    return _train(_setup(tmp_path_factory.mktemp("qlora"), tiny_model_dir))


def _validation_loss(model, run: Run) -> float:
    """The Trainer's eval loss recomputed by hand: the mean over packed eval batches of each batch's token mean."""
    rows = read_token_split(run.data_dir / "validation.jsonl", run.config.train.eval_max_rows).to_list()
    collate, size = build_collator(run.tokenizer, packing=True), run.config.train.batch_size
    with torch.no_grad():
        losses = [model(**collate(rows[i : i + size]), use_cache=False).loss for i in range(0, len(rows), size)]
    return float(torch.stack(losses).mean())


def test_training_lowers_the_validation_loss(qlora_run: Run) -> None:
    result = qlora_run.result
    evals = [entry["eval_loss"] for entry in result.log_history if "eval_loss" in entry]
    steps = qlora_run.config.train
    assert result.global_step == steps.max_steps and not result.stopped_early
    assert len(evals) == steps.max_steps // steps.eval_steps
    assert all(math.isfinite(value) for value in evals)
    assert result.best_eval_loss == min(evals)
    assert result.best_eval_loss < result.first_eval_loss
    # Answers are a few label tokens: a model that learned anything beats guessing uniformly over the vocabulary.
    assert result.best_eval_loss < math.log(len(qlora_run.tokenizer))
    assert json.loads((qlora_run.run_dir / "first_eval_loss.json").read_text())["eval_loss"] == result.first_eval_loss


def test_adapter_folder_is_a_loadable_peft_adapter(qlora_run: Run) -> None:
    adapter_dir = qlora_run.result.adapter_dir
    files = {path.name for path in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not any(name.endswith(".bin") for name in files), files
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == qlora_run.config.lora.r
    assert adapter_config["base_model_name_or_path"] == qlora_run.config.model.name_or_path

    config = qlora_run.config
    loaded = PeftModel.from_pretrained(load_base_model(config.model, config.quantization), adapter_dir).eval()
    trained = {name: value for name, value in qlora_run.model.state_dict().items() if "lora_" in name}
    reloaded = {
        name.replace("base_model.model.", "", 1): value
        for name, value in loaded.state_dict().items()
        if "lora_" in name
    }
    assert trained.keys() == reloaded.keys() and trained
    for name, value in trained.items():
        assert torch.equal(value, reloaded[name]), name
    # LoRA's B matrices start at zero: non-zero ones prove the saved adapter holds trained weights.
    assert any(value.abs().sum() > 0 for name, value in reloaded.items() if "lora_B" in name)
    # The reloaded adapter reproduces the last validation loss the Trainer logged.
    last_eval = [entry["eval_loss"] for entry in qlora_run.result.log_history if "eval_loss" in entry][-1]
    assert _validation_loss(loaded, qlora_run) == pytest.approx(last_eval, rel=1e-4)


def test_base_linear_layers_are_4bit_during_training(qlora_run: Run) -> None:
    assert qlora_run.snapshots, "the metrics sink never saw a training log"
    layers = qlora_run.model.config.num_hidden_layers
    for snapshot in qlora_run.snapshots:
        assert snapshot["training"]
        assert len(snapshot["lora_base_layers"]) == len(PROJECTIONS) * layers
        assert set(snapshot["lora_base_layers"].values()) == {bnb.nn.Linear4bit}
        assert {name.rsplit(".", 2)[-2] for name in snapshot["linear4bit"]} == set(PROJECTIONS)
        assert len(snapshot["linear4bit"]) == len(PROJECTIONS) * layers
        assert set(snapshot["weight_dtypes"].values()) == {torch.uint8}  # packed NF4 storage


def test_only_the_lora_weights_train(qlora_run: Run, tiny_model_dir: Path) -> None:
    result, model = qlora_run.result, qlora_run.model
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    lora_params = sum(param.numel() for param in trainable.values())
    assert result.trainable_params == lora_params
    # LoRA adds r x in (A) and out x r (B) to every adapted in -> out projection.
    rank = qlora_run.config.lora.r
    expected = sum(
        rank * (module.base_layer.in_features + module.base_layer.out_features)
        for module in model.modules()
        if isinstance(module, LoraLayer)
    )
    assert result.trainable_params == expected
    # PEFT counts each 4-bit weight at its unquantized size: total = the full-precision base + the adapter.
    base_params = AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    assert result.total_params == base_params + result.trainable_params
    assert result.trainable_params < 0.2 * result.total_params


def test_packing_keeps_attention_inside_each_row(qlora_run: Run) -> None:
    """The packed batch the Trainer trains on gives every row exactly the logits and loss it gets alone."""
    model, tokenizer = qlora_run.model, qlora_run.tokenizer
    rows = read_token_split(qlora_run.data_dir / "train.jsonl", max_rows=6).to_list()
    batch = build_collator(tokenizer, packing=True)(rows)
    lengths = [len(row["input_ids"]) for row in rows]
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    assert model.config.use_cache is False  # as training runs it; a cache would disable packed-mask detection
    assert model.config._attn_implementation == NAME  # attention runs on each example's own slice

    model.eval()
    try:
        with torch.no_grad():
            packed = model(**batch)
            crossing = model(**batch, attention_mask=torch.ones_like(batch["input_ids"]))
            alone = [
                model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])) for row in rows
            ]
    finally:
        model.train()

    starts = [sum(lengths[:i]) for i in range(len(rows))]
    for start, length, single in zip(starts, lengths, alone, strict=True):
        diff = (packed.logits[0, start : start + length] - single.logits[0]).abs().max().item()
        assert diff < 1e-4, f"row at {start}: packed logits differ from the row alone by {diff}"
    # The packed loss is the token-weighted mean of the rows' own losses (no token predicts across rows).
    counts = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    weighted = sum(single.loss.item() * count for single, count in zip(alone, counts, strict=True)) / sum(counts)
    assert packed.loss.item() == pytest.approx(weighted, abs=1e-4)
    # Control: the same packed tokens with a plain all-ones mask attend across rows, and the check above sees it.
    crossed = max(
        (crossing.logits[0, start : start + length] - single.logits[0]).abs().max().item()
        for start, length, single in zip(starts[1:], lengths[1:], alone[1:], strict=True)
    )
    assert crossed > 1e-4


def test_shared_prompt_prefix_gives_each_row_its_own_logits_loss_and_gradients(qlora_run: Run) -> None:
    """The prompt prefix a batch shares is computed once, and every row still gets what it gets alone."""
    model, tokenizer = qlora_run.model, qlora_run.tokenizer
    rows = read_token_split(qlora_run.data_dir / "train.jsonl", max_rows=6).to_list()
    shared = shared_prompt_prefix([row["input_ids"] for row in rows], [row["labels"] for row in rows])
    assert shared > 0  # the chat template's system turn and the instruction start every row
    lengths = [len(row["input_ids"]) for row in rows]
    batch = build_collator(tokenizer, packing=True, share_prefix=True)(rows)
    assert batch["input_ids"].shape == (1, sum(lengths) - (len(rows) - 1) * shared)

    model.eval()  # no dropout: the shared and the plain batch must then agree exactly
    try:
        with torch.no_grad():
            packed = model(**batch)
            alone = [
                model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])) for row in rows
            ]
        gradients = {}
        for share in (False, True):
            model.zero_grad()
            model(
                **build_collator(tokenizer, packing=True, answer_logits_only=True, share_prefix=share)(rows)
            ).loss.backward()
            gradients[share] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    finally:
        model.zero_grad()
        model.train()

    assert (packed.logits[0, :shared] - alone[0].logits[0, :shared]).abs().max() < 1e-4
    start = shared
    for length, single in zip(lengths, alone, strict=True):
        diff = (packed.logits[0, start : start + length - shared] - single.logits[0, shared:]).abs().max().item()
        assert diff < 1e-4, f"row at {start}: logits differ from the row alone by {diff}"
        start += length - shared
    counts = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    weighted = sum(single.loss.item() * count for single, count in zip(alone, counts, strict=True)) / sum(counts)
    assert packed.loss.item() == pytest.approx(weighted, abs=1e-4)
    assert gradients[True].keys() == gradients[False].keys() and gradients[True]
    for name, plain in gradients[False].items():
        assert torch.allclose(gradients[True][name], plain, rtol=1e-3, atol=1e-6), name


def test_the_shared_prefix_stops_before_the_first_learned_token() -> None:
    rows = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 9]]
    prompt_only = [[IGNORE_INDEX] * len(row) for row in rows]
    assert shared_prompt_prefix(rows, prompt_only) == 3
    # Token 3 is learned in the second row: position 1, which predicts it, must be computed per row.
    learned = [list(labels) for labels in prompt_only]
    learned[1][2] = 3
    assert shared_prompt_prefix(rows, learned) == 1
    assert shared_prompt_prefix(rows[:1], prompt_only[:1]) == 0  # a row alone shares nothing
    assert shared_prompt_prefix([[1, 2], [7, 2]], [[IGNORE_INDEX] * 2] * 2) == 0


def _finite_weights(path: Path) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in load_file(path / "adapter_model.safetensors").values())


def test_divergence_stops_training_and_keeps_only_good_checkpoints(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A checkpoint every step; the schedule warms up from lr 0, so step 1 is a harmless (good) checkpoint and
    # step 2 jumps to 1e20: its weights are huge but finite, and the loss they give is not.
    overrides = {"train.learning_rate": 1e20, "train.save_steps": 1, "train.logging_steps": 1}
    run = _setup(tmp_path, tiny_model_dir, overrides)
    with pytest.raises(TrainingDivergedError) as error:
        _train(run)
    message = str(error.value)
    checkpoint_dir = run.run_dir / "checkpoints"
    assert "NaN/inf" in message and "train.learning_rate" in message and str(checkpoint_dir) in message
    assert not (run.run_dir / "adapter").exists()

    checkpoints = sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert checkpoints, "the warm-up step's checkpoint should have been kept"
    for checkpoint in checkpoints:
        assert _finite_weights(checkpoint), checkpoint.name
    # The last one (what a resume would pick) loads, and its weights still give a finite validation loss.
    config = run.config
    model = PeftModel.from_pretrained(load_base_model(config.model, config.quantization), checkpoints[-1]).eval()
    assert math.isfinite(_validation_loss(model, run))


def test_plain_lora_trains_without_quantization(tmp_path: Path, tiny_model_dir: Path) -> None:
    overrides = {
        "quantization.enabled": False,
        "train.max_steps": 4,
        "train.eval_steps": 4,
        "train.save_steps": 4,
        "train.logging_steps": 1,
    }
    run = _train(_setup(tmp_path, tiny_model_dir, overrides))
    assert run.snapshots
    for snapshot in run.snapshots:
        assert snapshot["training"] and not snapshot["linear4bit"]
        assert set(snapshot["lora_base_layers"].values()) == {torch.nn.Linear}
        assert set(snapshot["weight_dtypes"].values()) == {torch.float32}
    assert run.result.best_eval_loss < run.result.first_eval_loss
    assert (run.result.adapter_dir / "adapter_model.safetensors").is_file()


def test_finite_check_is_one_reduction_and_overflow_is_not_divergence() -> None:
    from tasks.lib.training.callbacks import _all_finite

    assert _all_finite([torch.ones(3), torch.zeros(2, 2)]) and _all_finite([])
    assert not _all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    huge = torch.full((4,), 3e38)  # finite values whose sum overflows: the guard then checks element by element
    assert not _all_finite([huge]) and bool(torch.isfinite(huge).all())


def test_forgetting_proxy_is_logged_each_evaluation_and_its_bound_stops_training(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    overrides = {
        "train.learning_rate": 3e-2,
        "train.eval_steps": 2,
        "train.save_steps": 2,
        "train.forgetting_proxy.windows": 4,
        "train.forgetting_proxy.window_tokens": 32,
    }
    # Text unlike the task's movie reviews: what a model that learns the task forgets first.
    generator = torch.Generator().manual_seed(0)
    pages = [" ".join(str(int(d)) for d in torch.randint(0, 10, (400,), generator=generator)) for _ in range(2)]

    def train(root: Path, bound: float | None) -> tuple[TrainResult, list[tuple[int, float]]]:
        run = _setup(root, tiny_model_dir, {**overrides, "train.forgetting_proxy.max_increase": bound})
        logged: list[tuple[int, float]] = []

        def sink(metrics, step) -> None:
            if "forgetting_proxy.loss_increase" in metrics:
                logged.append((step, metrics["forgetting_proxy.loss_increase"]))

        base = lambda: load_base_model(run.config.model, run.config.quantization)  # noqa: E731
        result = train_adapter(
            run.config, base, run.tokenizer, run.data_dir, run.run_dir, metrics_sink=sink, general_text=pages
        )
        return result, logged

    unbounded, logged = train(tmp_path / "unbounded", None)
    assert [step for step, _ in logged] == [0, 2, 4, 6, 8, 10, 12]  # every evaluation, the initial one too
    assert logged[0][1] == pytest.approx(0.0, abs=1e-6)  # an untrained adapter is the base
    assert unbounded.stopped_by_forgetting_proxy is None and unbounded.global_step == 12
    assert max(increase for _, increase in logged) > 0.05  # the task moved the general-text loss up

    bound = max(increase for _, increase in logged) / 2
    bounded, logged = train(tmp_path / "bounded", bound)
    assert bounded.stopped_by_forgetting_proxy is not None and bounded.global_step < 12
    assert logged[-1][1] > bound and all(increase <= bound for _, increase in logged[:-1])


def test_the_forgetting_proxy_reads_only_documents_the_gate_never_scores(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tasks.lib.config.benchmark_names import OUTPUT_FILES
    from tasks.train import general_text_pages

    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    pages = [f"article {index}" for index in range(6)]
    lines = [json.dumps({"id": f"wikitext-{i}", "title": f"t{i}", "page": page}) for i, page in enumerate(pages)]
    (benchmarks / OUTPUT_FILES["wikitext"]).write_text("\n".join(lines) + "\n")

    def proxy_pages(overrides: dict) -> list[str]:
        return general_text_pages(load_config(write_tiny_config(tmp_path, tiny_model_dir, benchmarks, overrides)))

    first = {"forgetting.sample": "first"}
    assert proxy_pages({**first, "forgetting.perplexity_limit": 2}) == pages[2:]  # the gate scores the first two
    drawn = proxy_pages({"forgetting.perplexity_limit": 2})  # the gate scores two drawn documents
    assert len(drawn) == 4 and drawn != pages[2:] and set(drawn) < set(pages)
    assert proxy_pages({"forgetting.perplexity_limit": None}) == []  # the gate scores them all: no proxy
    assert proxy_pages({"forgetting.benchmarks": ["hellaswag"]}) == pages  # no perplexity row: every page
    assert proxy_pages({"train.forgetting_proxy.enabled": False}) == []


def test_resume_passes_over_a_checkpoint_rank_0_did_not_finish_writing(tmp_path: Path) -> None:
    from tasks.lib.training.trainer import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    for step, complete in ((4, True), (8, True), (12, False)):  # 12: a rank's RNG state, no trainer_state.json
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "rng_state_1.pth").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-tmp").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
