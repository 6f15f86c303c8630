"""Registered MLflow versions in the BentoML model store: the one place serving loads models from.

A registered version ``N`` of ``loopline-ctr`` becomes the BentoML model ``loopline-ctr:vN`` holding
the same TorchScript ``scorer.pt`` (its feature spec travels inside), with the MLflow version and run
as labels. Packaging imports it before building a Bento; the service loads champion and canary by
version from here, importing a version from MLflow the first time it is asked for (a hot swap to a
version registered after the Bento was built).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from loopline.registry import MODEL_NAME, SCORER_FILE, LoadedModel, RegistryError, client, load_scorer_file, model_uri

BENTO_MODEL_NAME = MODEL_NAME


def bento_tag(version: str | int) -> str:
    """The BentoML model tag of MLflow version ``version``: ``loopline-ctr:v<version>``."""
    text = str(version).removeprefix("v")
    if not text.isdigit():
        raise ValueError(f"model version: expected an MLflow version number such as 7, got {version!r}")
    return f"{BENTO_MODEL_NAME}:v{text}"


def find_version(version: str | int) -> Any | None:
    """The BentoML model of ``version``, or None if it has not been imported."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(bento_tag(version))
    except NotFound:
        return None


def import_version(version: str | int, *, tracking_uri: str | None = None) -> Any:
    """Copy registered version ``version`` into the BentoML model store (idempotent); return the model."""
    import bentoml
    import mlflow

    from loopline.registry import configure_mlflow

    existing = find_version(version)
    if existing is not None:
        return existing
    number = bento_tag(version).rsplit(":v", 1)[1]
    mlflow_client = client(tracking_uri)
    try:
        registered = mlflow_client.get_model_version(MODEL_NAME, number)
    except Exception as error:
        raise RegistryError(f"{MODEL_NAME} has no version {number}: {error}") from error
    configure_mlflow(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="loopline-import-") as scratch:
        uri = model_uri(number)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch))
        except Exception as error:
            raise RegistryError(f"cannot download model {uri}: {error}") from error
        found = sorted(local.rglob(SCORER_FILE))
        if not found:
            raise RegistryError(f"model {uri} holds no {SCORER_FILE}; was it logged by loopline.training?")
        load_scorer_file(found[0])  # refuse to import a file that does not load
        try:
            with bentoml.models.create(
                bento_tag(number),
                labels={"mlflow_model": MODEL_NAME, "mlflow_version": number},
                metadata={"mlflow_run_id": registered.run_id, "mlflow_source": registered.source, "model_uri": uri},
            ) as model:
                shutil.copyfile(found[0], model.path_of(SCORER_FILE))
        except Exception:
            # Another process (a second worker) may have imported the same version meanwhile: use its copy.
            if find_version(number) is None:
                raise
    return find_version(number)


def load_version(version: str | int, *, tracking_uri: str | None = None, import_missing: bool = True) -> LoadedModel:
    """Version ``version`` ready to score, from the BentoML model store (imported from MLflow if missing)."""
    model = find_version(version)
    if model is None:
        if not import_missing:
            raise RegistryError(f"{bento_tag(version)} is not in the BentoML model store; import it first")
        model = import_version(version, tracking_uri=tracking_uri)
    module, spec = load_scorer_file(model.path_of(SCORER_FILE))
    return LoadedModel(
        module=module,
        spec=spec,
        model_uri=str(model.info.metadata.get("model_uri", bento_tag(version))),
        version=str(model.info.labels.get("mlflow_version") or model.tag.version).removeprefix("v"),
        run_id=model.info.metadata.get("mlflow_run_id"),
    )
