"""Config sections for the data: sources, row shapes, the split and replay."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.lib.config.section import Section


class SplitConfig(Section):
    validation: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of rows held out for validation loss (unless validation_path)."
    )
    test: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction held out for target-task evaluation (unless test_path)."
    )

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must be below 1.0 so rows remain for training")
        return self


class TableConfig(Section):
    header: bool = Field(True, description="CSV/TSV: line 1 names the columns.")
    columns: list[str] | None = Field(None, description="Column names; required when header is false.")
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="Default: ',' for .csv, tab for .tsv.")
    quoting: Literal["auto", "minimal", "none"] = Field(
        "auto",
        description="minimal: quoted fields (pandas, spreadsheets); none: GLUE-style TSV; auto: csv minimal, tsv none.",
    )

    @model_validator(mode="after")
    def _names_without_header(self) -> TableConfig:
        if not self.header and not self.columns:
            raise ValueError("header is false: list the column names in columns")
        return self


class ReplayConfig(Section):
    path: str = Field(description="General instruction data mixed into training only (file or hub id).")
    format: Literal["auto", "alpaca", "chat", "prompt_completion"] = Field(
        "auto", description="Row shape of the replay data, as `data.format` (auto: detected from the columns)."
    )
    hub_split: str = Field("train", description="Split to read when `path` is a hub id or data set folder.")
    hub_config: str | None = Field(None, description="Hub configuration name, when `path` is a hub id.")
    hub_revision: str | None = Field(None, description="Hub branch, tag or commit; null: the default branch.")
    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of the training rows that are replay rows.")


class DataConfig(Section):
    path: str = Field(description="Local JSONL/JSON/CSV/TSV/Parquet file, or a hub data set id.")
    hub_split: str = Field("train", description="Split to read when `path` is a hub id or data set folder.")
    hub_config: str | None = Field(
        None,
        description="Configuration name of a hub data set (e.g. sst2 for nyu-mll/glue); applies to every hub "
        "source of this section.",
    )
    hub_revision: str | None = Field(
        None,
        description="Hub branch, tag or commit; null: the default branch. The data version is the commit it "
        "resolves to (a 40-character commit also works offline).",
    )
    table: TableConfig = Field(default_factory=TableConfig, description="How CSV/TSV files are read.")
    validation_path: str | None = Field(
        None, description="Separate validation source (file or hub id, same format); replaces split.validation."
    )
    validation_hub_split: str = Field("validation", description="Split to read when validation_path is a hub id.")
    test_path: str | None = Field(
        None, description="Separate test source (file or hub id, same format); replaces split.test."
    )
    test_hub_split: str = Field("test", description="Split to read when test_path is a hub id.")
    format: Literal["auto", "alpaca", "chat", "prompt_completion", "template"] = Field(
        "auto", description="Row shape; auto detects alpaca, chat (messages) and prompt/completion."
    )
    prompt_template: str | None = Field(None, description="format=template: user turn with {column} placeholders.")
    completion_template: str | None = Field(
        None, description="format=template: assistant answer with {column} placeholders."
    )
    value_maps: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per-column value renaming, e.g. {label: {'0': negative}}."
    )
    system_prompt: str | None = Field(None, description="System turn prepended to every row.")
    rename_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column renames applied to every source before templating, e.g. {content: sentence} when "
        "the test file names a column differently from the training file.",
    )
    max_rows: int | None = Field(None, gt=0, description="Keep the first N rows after shuffling by seed.")
    max_length: int = Field(256, gt=8, description="Token limit for prompt + answer.")
    overlong: Literal["drop", "truncate"] = Field("drop", description="What to do with rows over max_length.")
    deduplicate: bool = Field(True, description="Drop rows whose whole conversation repeats an earlier row's.")
    on_invalid: Literal["error", "drop"] = Field(
        "error", description="error: refuse the file naming every bad row; drop: skip them into rejects.jsonl."
    )
    max_invalid_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="With on_invalid=drop, more invalid rows than this is an error anyway."
    )
    replay: ReplayConfig | None = Field(
        None, description="Mix general data into training against forgetting; never into validation or test."
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Validation and test fractions, or the files that hold them."
    )
    processed_dir: str = Field("data/processed", description="Where prepared splits are written.")

    @model_validator(mode="after")
    def _template_needs_templates(self) -> DataConfig:
        if self.format == "template" and not (self.prompt_template and self.completion_template):
            raise ValueError("format 'template' needs both prompt_template and completion_template")
        return self

    @model_validator(mode="after")
    def _every_held_out_split_has_a_source(self) -> DataConfig:
        for name in ("validation", "test"):
            if getattr(self.split, name) == 0.0 and not getattr(self, f"{name}_path"):
                raise ValueError(f"split.{name} is 0 and no {name}_path is given: the {name} split would be empty")
        return self
