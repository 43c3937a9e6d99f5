import json
from pathlib import Path

import pytest

from tasks.lib.config import ConfigError, apply_overrides, config_from_dict, load_config
from tasks.lib.dataset.data_formats import is_hub_id
from tasks.lib.run.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]


def minimal(**sections):
    raw = {
        "name": "t",
        "model": {"name_or_path": "org/model"},
        "data": {"path": "data.jsonl"},
        "registry": {"model_name": "t"},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) else raw.__setitem__(key, value)
    return raw


def test_demo_config_is_valid():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.quantization.enabled and config.quantization.quant_type == "nf4"
    assert config.quantization.double_quant
    assert config.data.format == "template"


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("lora", {"r": 0}, "lora.r"),
        ("train", {"learning_rate": 0}, "train.learning_rate"),
        ("train", {"learning_rate": -1e-4}, "train.learning_rate"),
        ("data", {"split": {"validation": 1.5}}, "data.split.validation"),
        ("data", {"split": {"test": -0.1}}, "data.split.test"),
        ("lora", {"rank": 8}, "lora.rank"),
        ("train", {"max_steps": "many"}, "train.max_steps"),
        ("quantization", {"quant_type": "int3"}, "quantization.quant_type"),
        ("forgetting", {"look_every": 0}, "forgetting.look_every"),
        ("forgetting", {"look_every": 100, "perplexity_look_every": 5}, "forgetting.perplexity_look_every"),
        ("forgetting", {"perplexity_look_every": 10}, "forgetting"),
    ],
)
def test_bad_values_are_refused_naming_the_key(section, values, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict(minimal(**{section: values}))
    assert key in str(error.value)


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="trainig: unknown key"):
        config_from_dict(minimal(trainig={"max_steps": 1}))


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as error:
        config_from_dict(minimal(lora={"r": 0}, train={"learning_rate": 0}))
    assert "lora.r" in str(error.value) and "train.learning_rate" in str(error.value)


def test_splits_must_leave_training_rows():
    with pytest.raises(ConfigError, match="validation \\+ test"):
        config_from_dict(minimal(data={"split": {"validation": 0.5, "test": 0.5}}))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text((REPO / "configs" / "demo.yaml").read_text())
    config = load_config(path, ["train.learning_rate=1e-4", "lora.target_modules=[q_proj, v_proj]"])
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(path, ["lora.r=-2"])
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["no-equals-sign"])


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_data_file_is_refused_before_work(tmp_path):
    config = config_from_dict(minimal(data={"path": str(tmp_path / "absent.jsonl")}, forgetting={"enabled": False}))
    with pytest.raises(ConfigError, match="data.path"):
        check_inputs(config)


def test_an_lm_eval_yaml_whose_data_file_is_missing_is_refused_before_work(tmp_path):
    """Found by `qlora validate` and at the start of `qlora run`, in well under 3 s, not in the forgetting step after
    training; a YAML whose files exist (`!function` tags and all) passes."""
    import time

    (tmp_path / "data.jsonl").write_text("")
    present = tmp_path / "present.jsonl"
    present.write_text('{"question": "q", "label": 0}\n')
    yaml_text = (
        "task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {files}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: !function utils.doc_to_text\n"
    )
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml_text.format(files=f'"{present}"'))
    bad.write_text(yaml_text.format(files=f'["{present}", "{tmp_path / "absent.jsonl"}"]'))

    def config(path):
        return config_from_dict(
            minimal(
                data={"path": str(tmp_path / "data.jsonl")},
                forgetting={"benchmarks": ["mine"], "custom": {"mine": {"path": str(path), "kind": "lm_eval"}}},
            )
        )

    check_inputs(config(good))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="forgetting.custom.mine: .*absent.jsonl, which does not exist"):
        check_inputs(config(bad))
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("tied", [True, False])
def test_lora_on_a_tied_lm_head_is_refused(tmp_path, tied):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"tie_word_embeddings": tied}))
    (tmp_path / "data.jsonl").write_text("")
    raw = minimal(
        model={"name_or_path": str(tmp_path / "model")},
        data={"path": str(tmp_path / "data.jsonl")},
        lora={"target_modules": ["q_proj", "lm_head"]},
        forgetting={"enabled": False},
    )
    if tied:
        with pytest.raises(ConfigError, match="lora.target_modules: lm_head shares its weights"):
            check_inputs(config_from_dict(raw))
    else:
        check_inputs(config_from_dict(raw))
    raw["lora"]["target_modules"] = ["q_proj"]
    check_inputs(config_from_dict(raw))


def test_hub_ids_are_told_from_paths():
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not is_hub_id("data/train.jsonl")
    assert not is_hub_id("a/b/c")


def test_fingerprint_changes_with_any_value():
    first = config_from_dict(minimal())
    second = config_from_dict(minimal(lora={"r": 8}))
    assert first.fingerprint() == config_from_dict(minimal()).fingerprint()
    assert first.fingerprint() != second.fingerprint()


@pytest.mark.parametrize("key", ["tracking.uri", "tracking.artifact_location"])
def test_credentials_in_uris_are_refused_without_echoing_them(key):
    with pytest.raises(ConfigError) as error:
        load_config("configs/demo.yaml", [f"{key}=https://trainer:pa55word-x@mlflow.example.com"])
    assert key in str(error.value) and "MLFLOW_TRACKING_PASSWORD" in str(error.value)
    assert "pa55word-x" not in str(error.value)


def test_validate_reads_the_data_and_names_a_missing_column(capsys):
    from flows.cli import main

    assert main(["validate", "configs/demo.yaml"]) == 0
    assert main(["validate", "configs/demo.yaml", "--set", "data.prompt_template=Review of {text}"]) == 2
    error = capsys.readouterr().err
    assert "data/raw/sst2/train.tsv" in error and "'text'" in error and "available columns: label, sentence" in error


def test_header_less_table_needs_column_names():
    with pytest.raises(ConfigError, match="data.table: header is false"):
        load_config("configs/demo.yaml", ["data.table.header=false"])


def test_a_typo_in_a_local_model_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    (tmp_path / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    typo = str(tmp_path / "models" / "smollm2-135m-instruc")
    config = config_from_dict(minimal(model={"name_or_path": typo}, forgetting={"enabled": False}))
    with pytest.raises(ConfigError, match="did you mean .*smollm2-135m-instruct\\?"):
        check_inputs(config, benchmarks=False)


@pytest.mark.parametrize("config_file", ["ddp.yaml", "fsdp_qlora.yaml"])
def test_shipped_accelerate_configs_and_the_fsdp_storage_rule(tmp_path, config_file):
    (tmp_path / "data.jsonl").write_text("")
    launch = str(REPO / "configs" / "accelerate" / config_file)
    raw = minimal(
        data={"path": str(tmp_path / "data.jsonl")},
        train={"num_processes": 2, "accelerate_config": launch},
        forgetting={"enabled": False},
    )
    if config_file == "fsdp_qlora.yaml":
        with pytest.raises(ConfigError, match="quantization.quant_storage"):
            check_inputs(config_from_dict(raw))
        raw["quantization"] = {"quant_storage": "bfloat16", "compute_dtype": "bfloat16"}
    check_inputs(config_from_dict(raw))
    raw["train"]["accelerate_config"] = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="train.accelerate_config"):
        check_inputs(config_from_dict(raw))


def test_benchmark_names_are_checked_with_suggestions_and_custom_ones_must_be_scored(tmp_path):
    import time

    items = tmp_path / "mine.jsonl"
    items.write_text('{"query": "2+2=", "choices": ["4", "5"], "label": 0}\n')
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        config_from_dict(
            minimal(
                forgetting={
                    "benchmarks": ["hellaswag", "mmluu", "winogrand", "hellaswag", "lambada"],
                    "custom": {"mine": {"path": str(items), "kind": "multiple_choice"}},
                    "settings": {
                        "boolq": {"limit": 10},
                        "hellaswag": {"metric": "f1"},
                        "lambada": {"metric": "perplexity"},
                        "mine": {"metric": "word_perplexity"},
                    },
                }
            )
        )
    message = str(error.value)
    assert time.monotonic() - started < 3.0
    assert "unknown benchmark 'mmluu'; did you mean 'mmlu'" in message
    assert "'winogrand'; did you mean 'winogrande'" in message
    assert "'hellaswag' is listed twice" in message
    assert "custom.mine: defined but not scored" in message
    assert "settings.boolq: 'boolq' is not among forgetting.benchmarks" in message
    assert "settings.hellaswag.metric: hellaswag can be judged on ['acc', 'acc_norm'], not 'f1'" in message
    assert "settings.lambada.metric: lambada can be judged on ['acc'], not 'perplexity'" in message
    assert "settings.mine: 'mine' is not among forgetting.benchmarks" in message
    # lm-eval's own task names are accepted (scored from the hub where it is reachable).
    config = config_from_dict(
        minimal(
            forgetting={
                "benchmarks": ["mmlu", "sciq", "mine"],
                "custom": {"mine": {"path": str(items), "kind": "multiple_choice"}},
                "settings": {"mmlu": {"margin": 3.0, "limit": 1000}},
            }
        )
    )
    assert config.forgetting.settings["mmlu"].margin == 3.0


def test_bad_rows_of_a_custom_benchmark_are_refused_before_work_naming_file_and_line(tmp_path):
    items = tmp_path / "mine.jsonl"
    good = '{"query": "2+2=", "choices": ["4", "5"], "label": 0}'
    items.write_text("\n".join([good, '{"query": "x", "choices": ["a"], "label": 0}', good, '{"query": "y"}']) + "\n")
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    config = config_from_dict(
        minimal(
            model={"name_or_path": "org/model"},
            data={"path": str(data)},
            forgetting={
                "benchmarks": ["mine"],
                "custom": {"mine": {"path": str(items), "kind": "multiple_choice"}},
            },
        )
    )
    with pytest.raises(ConfigError) as error:
        check_inputs(config)
    message = str(error.value)
    assert "forgetting.custom.mine" in message
    assert f"{items} line 2: choices must be a list of at least 2 strings" in message
    assert f"{items} line 4: missing choices or options, label or gold or answer" in message


def test_every_config_field_says_what_it_does() -> None:
    """Every key a user can set, in every section and subsection, carries a description (what `--help`-like docs
    and the JSON schema show)."""
    import typing

    from pydantic import BaseModel

    from tasks.lib.config import RunConfig

    undocumented, seen = [], set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        seen.add(model)
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                undocumented.append(prefix + name)
            pending = [field.annotation]
            while pending:
                annotation = pending.pop()
                pending.extend(typing.get_args(annotation))
                if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation not in seen:
                    walk(annotation, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert len(seen) > 15 and not undocumented, undocumented
