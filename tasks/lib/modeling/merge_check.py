"""What the merge check found, as a typed result: read by the steps and the reports without loading torch."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MergeCheck(BaseModel):
    """The merged model against the adapter model it replaces, on answer tokens of real test items."""

    dtype: str
    n_prompts: int
    n_answer_tokens: int
    merged_vs_adapter_max: float = Field(description="Largest |delta log p| of an answer token, merged vs adapter.")
    merged_vs_adapter_mean: float
    base_vs_adapter_mean: float = Field(description="Mean |delta log p|, base vs adapter: what the adapter does.")
    relative_distance: float | None = Field(
        description="merged_vs_adapter_mean / base_vs_adapter_mean; None when the adapter moves nothing measurable."
    )
    argmax_agreement: float = Field(description="Answer positions whose argmax token agrees, merged vs adapter.")
    max_logprob_diff: float = Field(description="The absolute bound applied for this dtype.")
