"""The MLflow Model Registry: log the merged model, register a version, move the champion/challenger aliases.

The merged model (a plain transformers folder) is logged, never the PEFT model: a PEFT model logged with a
local base came back from the registry with its base weights missing and newly initialised. It is logged as a
chat model MLflow serves (`tasks.io.serving`), with the folder as its artifact; `verify_round_trip` loads the
version as the server does and compares its weights with the merged folder's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from pydantic import BaseModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tasks.io.serving import CHAT_SIGNATURE, MERGED_ARTIFACT, MODEL_CODE, ChatServer, shipped_code
from tasks.io.tracking import scrub_mapping, tracking_uri
from tasks.lib.core.errors import UserError
from tasks.lib.core.failpoints import failpoint
from tasks.lib.gate.promotion import CHAMPION, ConfirmationLedger, PromotionDecision

LOGGED_MODEL_NAME = "merged_model"
PIPELINE_RUN_TAG = "pipeline_run_id"
ROUND_TRIP_TAG = "round_trip"
_REQUIREMENTS = ("torch", "transformers", "safetensors", "accelerate", "tokenizers")


class RegistryError(UserError, RuntimeError):
    """Registration or loading back from the registry went wrong."""


class RoundTripError(RegistryError):
    """The model loaded from the registry does not reproduce the model that was registered."""


class RoundTripReport(BaseModel):
    n_tensors: int  # every tensor of the merged folder's safetensors
    max_abs_weight_diff: float  # 0.0: the registered version holds the merged weights bit for bit


class RegistrationResult(BaseModel):
    version: int | None
    aliases: list[str]
    promoted: bool
    reason: str
    model_uri: str | None = None
    round_trip: RoundTripReport | None = None  # what `verify` measured on the registered version


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference imports optional packages (torchvision) that are absent here.
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def champion(model_name: str) -> tuple[int, dict[str, str]] | None:
    """(version, tags) of the version holding the champion alias, or None."""
    client = MlflowClient()
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    champion_version = registered.aliases.get(CHAMPION)
    if champion_version is None:
        return None
    return int(champion_version), client.get_model_version(model_name, str(champion_version)).tags


LEDGER_TAG_PREFIX = "test_ledger."


def current_aliases(model_name: str, version: str, tracking: str | None) -> list[str] | None:
    """The aliases `version` holds in the registry now (another run may have moved one since this run's result
    was stored); None when the registry cannot be read."""
    try:
        found = MlflowClient(tracking_uri=tracking_uri(tracking)).get_model_version(model_name, version)
    except MlflowException:
        return None
    return sorted(found.aliases)


def read_confirmation_ledger(model_name: str, fingerprint: str) -> ConfirmationLedger:
    """The registered model's record of confirmations made on the test set `fingerprint` (none yet: 0 looks)."""
    try:
        tags = MlflowClient().get_registered_model(model_name).tags
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return ConfirmationLedger(fingerprint=fingerprint)
        raise
    stored = tags.get(LEDGER_TAG_PREFIX + fingerprint)
    return ConfirmationLedger.model_validate_json(stored) if stored else ConfirmationLedger(fingerprint=fingerprint)


def record_test_look(model_name: str, ledger: ConfirmationLedger) -> None:
    """Write the ledger after a confirmation (under the registry lock, so looks are never lost to a race)."""
    key = LEDGER_TAG_PREFIX + ledger.fingerprint
    MlflowClient().set_registered_model_tag(model_name, key, ledger.model_dump_json())


def version_of_pipeline_run(client: MlflowClient, model_name: str, pipeline_run_id: str) -> int | None:
    """The version a (retried or rerun) pipeline run already registered, so it never registers twice."""
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return None
    mine = [int(v.version) for v in versions if v.tags.get(PIPELINE_RUN_TAG) == pipeline_run_id]
    return min(mine) if mine else None


def _log_merged_model(merged_dir: Path, example_prompt: str) -> str:
    """Logged as a chat model MLflow serves (`tasks.io.serving.ChatServer`); the merged folder is its artifact,
    copied as it is. MLflow loads it once to check that the input example is answered."""
    example = ({"messages": [{"role": "user", "content": example_prompt}]}, {"max_tokens": 16, "temperature": 0.0})
    with tempfile.TemporaryDirectory() as scratch:
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME,
            python_model=str(MODEL_CODE),
            artifacts={MERGED_ARTIFACT: str(merged_dir)},
            code_paths=[str(shipped_code(Path(scratch)))],
            signature=CHAT_SIGNATURE,
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
    return info.model_uri


def register_merged_model(
    merged_dir: Path,
    model_name: str,
    run_id: str,
    tags: dict[str, Any],
    decision: PromotionDecision,
    verify: Callable[[str], RoundTripReport] | None = None,
    description: str = "",
    example_prompt: str = "Hello!",
    model_description: str = "",
    model_tags: dict[str, str] | None = None,
) -> RegistrationResult:
    """Register the merged folder (logged in run `run_id`), verify the version, and only then move aliases.

    `description` (the model card, markdown) becomes the version's description; `example_prompt` the input
    example a served request is shown with; `model_description` and `model_tags` describe the registered model
    itself (what its versions are, how they are promoted and served).

    Nothing is registered when the decision says so. A pipeline run that already registered a version (a
    retried task, a rerun) gets that version back instead of a second one. `verify(models:/NAME/VERSION)`
    must raise when the version does not reproduce the merged model: the version is then tagged
    `round_trip=failed` and receives no alias.
    """
    merged_dir = Path(merged_dir)
    if not (merged_dir / "config.json").is_file():
        raise RegistryError(f"{merged_dir} is not a merged model folder (no config.json)")
    if not decision.register:
        return RegistrationResult(version=None, aliases=[], promoted=False, reason=decision.reason)
    client = MlflowClient()
    # A version is never unlabelled: "pending" from the moment it exists until its check says verified or failed.
    version_tags = {
        **scrub_mapping(tags),
        "run_id": run_id,
        **decision.tags,
        ROUND_TRIP_TAG: "pending" if verify is not None else "not checked",
    }
    version = version_of_pipeline_run(client, model_name, str(tags.get(PIPELINE_RUN_TAG, "")))
    model_uri = None
    if version is None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id != run_id:
            raise RegistryError(f"run {active.info.run_id} is active, but the model belongs to run {run_id}")
        if active is None:
            with mlflow.start_run(run_id=run_id):
                model_uri = _log_merged_model(merged_dir, example_prompt)
            # start_run's exit marked the run FINISHED; the run is not: its owner closes it.
            client.update_run(run_id, status="RUNNING")
        else:
            model_uri = _log_merged_model(merged_dir, example_prompt)
        version = int(mlflow.register_model(model_uri, model_name, tags=version_tags).version)
        failpoint("register.version-created")
    if description:
        client.update_model_version(model_name, str(version), description=description)
    if model_description:
        client.update_registered_model(model_name, description=model_description)
    for key, value in scrub_mapping(model_tags or {}).items():
        client.set_registered_model_tag(model_name, key, value)
    round_trip = None
    if verify is not None:
        try:
            round_trip = verify(f"models:/{model_name}/{version}")
        except RoundTripError:
            client.set_model_version_tag(model_name, str(version), ROUND_TRIP_TAG, "failed")
            raise
        client.set_model_version_tag(model_name, str(version), ROUND_TRIP_TAG, "verified")
    for alias in decision.aliases:
        client.set_registered_model_alias(model_name, alias, str(version))
    return RegistrationResult(
        version=version,
        aliases=decision.aliases,
        promoted=CHAMPION in decision.aliases,
        reason=decision.reason,
        model_uri=model_uri,
        round_trip=round_trip,
    )


def _model_folders(local: Path) -> tuple[Path, Path]:
    """(weights folder, tokenizer folder) of a downloaded version: the chat model's merged folder, or the layout
    of versions logged with MLflow's transformers flavor before (a champion registered by an older release)."""
    chat_model = [path.parent for path in (local / "artifacts").glob("*/config.json")]
    if len(chat_model) == 1:
        return chat_model[0], chat_model[0]
    return local / "model", local / "components" / "tokenizer"


def load_registered(uri: str, dst_dir: Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Download `models:/NAME@alias` or `models:/NAME/VERSION` and load it as a transformers model, refusing
    missing or extra weights."""
    dst = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix="registry-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as error:
        raise RegistryError(f"cannot download {uri}: {error.message}") from None
    model_dir, tokenizer_dir = _model_folders(local)
    if not (model_dir / "config.json").is_file() or not tokenizer_dir.is_dir():
        raise RegistryError(f"{uri} is not a merged transformers model (no config.json or tokenizer)")
    if not list(model_dir.glob("*.safetensors")):
        raise RegistryError(f"{uri} holds no safetensors weights")
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", use_safetensors=True, output_loading_info=True
    )
    broken = {key: value for key, value in info.items() if value}
    if broken:
        raise RegistryError(f"{uri} loaded with weight problems: {broken}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def verify_round_trip(uri: str, merged_dir: Path) -> RoundTripReport:
    """Load `uri` (models:/...) as MLflow's server does and raise RoundTripError unless every weight equals the
    merged folder's, its tokenizer renders chats with the same template, and it answers a chat request.

    Weights equal bit for bit, the same config and the same shipped decoding code mean the same answers on every
    input; comparing them needs no second copy of the merged model in memory (each tensor is read from the
    memory-mapped file in turn)."""
    try:
        served = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise RegistryError(f"cannot load {uri}: {error.message}") from None
    server = served.unwrap_python_model()
    if not isinstance(server, ChatServer):
        raise RoundTripError(f"{uri} is not a chat model ({type(server).__name__})")
    state = server.model.state_dict()
    problems, max_diff, n_tensors = [], 0.0, 0
    for weights_file in sorted(Path(merged_dir).glob("*.safetensors")):
        with safe_open(str(weights_file), framework="pt") as handle:
            for key in handle.keys():
                expected, n_tensors = handle.get_tensor(key), n_tensors + 1
                got = state.get(key)
                if got is None or got.shape != expected.shape or got.dtype != expected.dtype:
                    problems.append(f"{key}: missing or of another shape/dtype")
                    continue
                max_diff = max(max_diff, (got.detach().cpu().float() - expected.float()).abs().max().item())
    if max_diff > 0:
        problems.append(f"weights differ (max |diff| {max_diff:.3g})")
    if server.tokenizer.chat_template != AutoTokenizer.from_pretrained(merged_dir).chat_template:
        problems.append("the chat template differs")
    answer = served.predict({"messages": [{"role": "user", "content": "Hello"}]}, params={"max_tokens": 2})
    if not isinstance(answer, dict) or answer.get("object") != "chat.completion" or not answer.get("choices"):
        problems.append(f"a chat request was not answered with a chat completion: {answer!r:.200}")
    if problems or n_tensors == 0:
        raise RoundTripError(f"{uri} differs from the registered model: {'; '.join(problems) or 'no weights'}")
    return RoundTripReport(n_tensors=n_tensors, max_abs_weight_diff=max_diff)
