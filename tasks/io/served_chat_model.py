"""The file MLflow runs to build the served model ("models from code"): the registry holds no pickle."""

import mlflow

from tasks.io.serving import ChatServer

mlflow.models.set_model(ChatServer())
