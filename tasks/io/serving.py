"""The registered model as MLflow serves it: OpenAI-style chat messages in, a chat completion out.

`mlflow models serve -m models:/NAME@champion` loads `ChatServer`, which answers with the model's chat template
and the evaluation's own decoding (`tasks.lib.generation`, shipped with the model): greedy unless a request sets
a temperature above 0. A request reads `messages` and the params `max_tokens`, `temperature` and `top_p` (top
level, beside `messages`); a conversation that leaves no room for `max_tokens` in the model's context window is
refused (HTTP 400, naming the limit). Other fields are MLflow's scoring server's to handle: it ignores keys it does
not know, logging a line on the server side. The merged folder (safetensors, tokenizer, chat template, model
card) is the model's artifact under its own name (`artifacts/merged/`), loadable as it is by transformers, vLLM or
TGI.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_OUTPUT_SCHEMA
from mlflow.types.schema import Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

from tasks.lib.modeling.generation import PromptTooLong, chat_reply, generation_config

MERGED_ARTIFACT = "merged_model"
DEFAULT_MAX_TOKENS = 256
_MESSAGE = Object([Property("role", DataType.string), Property("content", DataType.string)])
CHAT_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(_MESSAGE), name="messages")]),
    outputs=CHAT_MODEL_OUTPUT_SCHEMA,
    params=ParamSchema(
        [
            ParamSpec("max_tokens", DataType.long, DEFAULT_MAX_TOKENS),
            ParamSpec("temperature", DataType.double, 0.0),
            ParamSpec("top_p", DataType.double, 1.0),
        ]
    ),
)
# Only these files travel with the model: the server needs no other project code.
_SHIPPED_MODULES = (
    "tasks/__init__.py",
    "tasks/io/__init__.py",
    "tasks/io/serving.py",
    "tasks/lib/__init__.py",
    "tasks/lib/modeling/__init__.py",
    "tasks/lib/modeling/generation.py",
)
_REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CODE = Path(__file__).with_name("served_chat_model.py")  # what MLflow runs to build the ChatServer


def conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """The conversations of a request: `{"messages": [...]}` (one), or a frame or list with a `messages` column
    (MLflow hands a request over as a one-row frame)."""
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame: one conversation per row
        model_input = model_input.to_dict(orient="list")
    if isinstance(model_input, dict):
        messages = model_input.get("messages")
        if messages is None:
            raise ValueError("the request needs 'messages': a list of {role, content} objects")
        batch = messages if messages and isinstance(messages[0], list | tuple) else [messages]
    elif isinstance(model_input, list):
        batch = [item["messages"] if isinstance(item, dict) else item for item in model_input]
    else:
        raise ValueError(f"expected {{'messages': [...]}}, got {type(model_input).__name__}")
    result = []
    for conversation in batch:
        turns = [dict(message) for message in conversation]
        if not turns or any(not isinstance(turn.get("content"), str) or not turn.get("role") for turn in turns):
            raise ValueError("every message needs a 'role' and a string 'content'")
        result.append([{"role": turn["role"], "content": turn["content"]} for turn in turns])
    return result


class ChatServer(mlflow.pyfunc.PythonModel):
    """The served model: `load_context` loads the merged folder, `predict` answers chat requests."""

    # As MLflow's own ChatModel: the signature (messages, params, chat completion) is declared when the model is
    # logged and enforced by MLflow, so `predict` needs no type hints for MLflow to read one from.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts[MERGED_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True).eval()
        self.model_name = Path(folder).name

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> dict | list[dict[str, Any]]:
        params = params or {}
        max_tokens = int(DEFAULT_MAX_TOKENS if params.get("max_tokens") is None else params["max_tokens"])
        temperature = float(params.get("temperature") or 0.0)
        top_p = params.get("top_p")
        try:  # a bad request is the client's error (HTTP 400), named
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
            batch = conversations(model_input)
            generation_config(self.model, self.tokenizer, max_tokens, temperature, top_p)
        except ValueError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from None
        completions = []
        for messages in batch:
            try:
                reply = chat_reply(self.model, self.tokenizer, messages, max_tokens, temperature, top_p)
            except PromptTooLong as error:  # HTTP 400 naming the limit, not an answer made of noise
                raise MlflowException.invalid_parameter_value(str(error)) from None
            completions.append(
                {
                    "id": f"chatcmpl-{uuid.uuid4().hex}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text},
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                }
            )
        # One conversation gets one completion object, as from OpenAI's API; a batch a list of them.
        return completions if len(completions) > 1 else completions[0]


def shipped_code(scratch: Path) -> Path:
    """A copy of the modules the server imports, as the `tasks` package MLflow puts on the server's path."""
    for relative in _SHIPPED_MODULES:
        target = Path(scratch) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_REPO_ROOT / relative, target)
    return Path(scratch) / "tasks"
