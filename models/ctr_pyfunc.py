"""MLflow pyfunc adapter of the CTR ranker (logged as "models from code": this file is the model's code).

It needs only torch, numpy and pandas: the model itself is the TorchScript file ``scorer.pt`` (a
``CtrScorer`` from ctr_ranker.py, with all preprocessing inside), and the feature lists are read
from the scripted module. ``predict`` takes a DataFrame with ``user_id``, ``item_id``, the numeric
and categorical feature columns (a missing column or NaN means "missing") and optionally
``position``; it returns one ``click_probability`` per row (at the reference position when no
position is given, which is what serving ranks by).
"""

import mlflow
import numpy as np
import pandas as pd
import torch


class CtrPyfunc(mlflow.pyfunc.PythonModel):
    """DataFrame in, click probabilities out, around the TorchScript ``CtrScorer``."""

    def load_context(self, context):
        self.scorer = torch.jit.load(context.artifacts["scorer"], map_location="cpu")
        self.scorer.eval()
        self.numeric_features = list(self.scorer.numeric_features)
        self.categorical_features = list(self.scorer.categorical_features)

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        rows = len(frame)
        for column in ("user_id", "item_id"):
            if column not in frame.columns:
                raise ValueError(f"input lacks column {column!r}; it has {sorted(map(str, frame.columns))}")
        numeric = np.full((rows, len(self.numeric_features)), np.nan, dtype=np.float32)
        for index, name in enumerate(self.numeric_features):
            if name in frame.columns:
                numeric[:, index] = pd.to_numeric(frame[name], errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
        categorical = []
        for name in self.categorical_features:
            if name in frame.columns:
                column = frame[name]
                categorical.append(column.astype(object).where(column.notna(), "").astype(str).tolist())
            else:
                categorical.append([""] * rows)
        position = None
        if "position" in frame.columns and frame["position"].notna().all():
            position = torch.from_numpy(frame["position"].to_numpy(dtype=np.int64))
        with torch.inference_mode():
            probabilities = self.scorer(
                frame["user_id"].astype(str).tolist(),
                frame["item_id"].astype(str).tolist(),
                torch.from_numpy(numeric),
                categorical,
                position,
            )
        return pd.DataFrame({"click_probability": probabilities.numpy().astype(np.float64)})


mlflow.models.set_model(CtrPyfunc())
