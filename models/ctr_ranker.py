"""CTR ranker v1 (registered as ``loopline-ctr``): the network and its self-contained serving module.

This file is the model; ``ctr_ranker.yaml`` beside it holds its hyperparameters and default feature
lists, ``ctr_pyfunc.py`` the MLflow adapter. It imports only torch, so a TorchScript export of
:class:`CtrScorer` runs anywhere torch runs, without Loopline's training code.

Network (DLRM-style): hashed user and item id embeddings (unseen ids hash into a trained table, so
they work), one embedding per categorical feature, the dense features projected to the same width,
pairwise dot products of all these field vectors (feature interactions), then an MLP to one logit.

Position bias: logged clicks depend on the slot an item was shown in. A learned per-position bias is
added to the logit during training only (a "shallow tower"), so the rest of the network learns
position-free relevance. Serving adds the bias of one fixed ``reference_position`` (the top slot):
the same constant for every candidate, so it never changes a ranking and the score reads as
"click probability if shown at the top". Evaluation on logged data may pass the logged positions.
"""

import torch
from torch import Tensor, nn

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
FNV_MASK = 0xFFFFFFFF


class HashedEmbedding(nn.Module):
    """A table of ``buckets`` rows; ids are hashed to buckets outside (FNV-1a, see ``CtrScorer.hash_ids``).

    Each row is the id's vector plus, in its last column, the id's own bias (a "wide" term added to
    the logit). Rows start near zero, so a bucket no training id reached reads as "an average id".
    """

    def __init__(self, buckets: int, dim: int, init_std: float = 0.01):
        super().__init__()
        # Sparse gradients: a training step touches only the rows of its batch's ids.
        self.embedding = nn.Embedding(buckets, dim + 1, sparse=True)
        nn.init.normal_(self.embedding.weight, std=init_std)
        with torch.no_grad():
            self.embedding.weight[:, -1] = 0.0

    def forward(self, buckets: Tensor) -> Tensor:
        return self.embedding(buckets)


class CompactEmbedding(nn.Module):
    """Sparse storage of a hashed table: only the rows of ``kept`` buckets; every other bucket reads zeros.

    ``kept`` is sorted (int32); a lookup is a binary search. Used by the pruned variant.
    """

    def __init__(self, kept: Tensor, rows: Tensor):
        super().__init__()
        if kept.dim() != 1 or rows.dim() != 2 or rows.shape[0] != kept.shape[0]:
            raise ValueError(f"kept {tuple(kept.shape)} and rows {tuple(rows.shape)} do not match")
        self.register_buffer("kept", kept.to(torch.int32).contiguous())
        self.embedding = nn.Embedding(rows.shape[0] + 1, rows.shape[1])
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[1:] = rows
        self.size = int(kept.shape[0])

    def forward(self, buckets: Tensor) -> Tensor:
        if self.size == 0:
            return self.embedding(torch.zeros_like(buckets))
        wanted = buckets.to(torch.int32)
        found_at = torch.searchsorted(self.kept, wanted).clamp(max=self.size - 1)
        hit = self.kept[found_at] == wanted
        index = torch.where(hit, found_at.to(torch.int64) + 1, torch.zeros_like(buckets))
        return self.embedding(index)


class CtrNet(nn.Module):
    """Embeddings + pairwise interactions + MLP -> one logit; plus a training-only position bias."""

    def __init__(
        self,
        n_numeric: int,
        category_sizes: list[int],
        user_buckets: int,
        item_buckets: int,
        embedding_dim: int,
        hidden: list[int],
        dropout: float,
        max_position: int,
    ):
        super().__init__()
        self.n_numeric = n_numeric
        self.user_embedding = HashedEmbedding(user_buckets, embedding_dim)
        self.item_embedding = HashedEmbedding(item_buckets, embedding_dim)
        self.category_embeddings = nn.ModuleList([nn.Embedding(size, embedding_dim) for size in category_sizes])
        for table in self.category_embeddings:
            nn.init.normal_(table.weight, std=0.01)
        self.dense_projection = nn.Linear(2 * n_numeric, embedding_dim)
        n_fields = 3 + len(category_sizes)
        first, second = torch.triu_indices(n_fields, n_fields, offset=1)
        self.register_buffer("pair_first", first)
        self.register_buffer("pair_second", second)
        layers: list[nn.Module] = []
        width = 2 * n_numeric + int(first.numel())
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
            width = units
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.position_bias = nn.Embedding(max_position + 1, 1)
        nn.init.zeros_(self.position_bias.weight)

    def forward(self, user: Tensor, item: Tensor, dense: Tensor, categories: Tensor) -> Tensor:
        """The position-free logit of each row. ``dense`` is ``CtrScorer.prepare_numeric``'s output."""
        user_row = self.user_embedding(user)
        item_row = self.item_embedding(item)
        fields = [user_row[:, :-1], item_row[:, :-1], self.dense_projection(dense)]
        for index, table in enumerate(self.category_embeddings):
            fields.append(table(categories[:, index]))
        stacked = torch.stack(fields, dim=1)
        products = torch.bmm(stacked, stacked.transpose(1, 2))
        pairs = products[:, self.pair_first, self.pair_second]
        features = torch.cat([dense, pairs], dim=1)
        return self.mlp(features).squeeze(1) + user_row[:, -1] + item_row[:, -1]

    def position_logit(self, position_index: Tensor) -> Tensor:
        return self.position_bias(position_index).squeeze(1)

    @torch.jit.ignore
    def position_parameters(self) -> list[nn.Parameter]:
        """The position tower's parameters (the training may give them their own learning rate)."""
        return list(self.position_bias.parameters())


class CtrScorer(nn.Module):
    """The serving module: raw inputs in, click probabilities out; all preprocessing is inside.

    ``forward(user_ids, item_ids, numeric, categorical, position=None)``:

    - ``user_ids``, ``item_ids``: lists of B strings (any id; unseen ones hash into the tables);
    - ``numeric``: float32 tensor (B, len(numeric_features)) in ``numeric_features`` order, NaN = missing;
    - ``categorical``: one list of B strings per entry of ``categorical_features`` ("" or unknown = missing);
    - ``position``: optional int64 tensor (B,) of logged slots; None (serving) uses ``reference_position``.

    ``score_encoded`` is the same computation from already-hashed ids and category codes.
    """

    # Declared for TorchScript (an empty list would not tell it the element type).
    numeric_features: list[str]
    categorical_features: list[str]
    vocabularies: list[dict[str, int]]

    def __init__(
        self,
        net: CtrNet,
        numeric_features: list[str],
        categorical_features: list[str],
        numeric_center: Tensor,
        numeric_scale: Tensor,
        vocabularies: list[dict[str, int]],
        user_buckets: int,
        item_buckets: int,
        reference_position: int,
        max_position: int,
        logit_offset: float = 0.0,
        clip: float = 5.0,
    ):
        super().__init__()
        if len(numeric_features) != numeric_center.numel() or len(numeric_features) != numeric_scale.numel():
            raise ValueError("numeric_center/numeric_scale must have one value per numeric feature")
        if len(vocabularies) != len(categorical_features):
            raise ValueError("one vocabulary per categorical feature is needed")
        self.net = net
        self.numeric_features = numeric_features
        self.categorical_features = categorical_features
        self.register_buffer("numeric_center", numeric_center.to(torch.float32).reshape(1, -1))
        self.register_buffer("numeric_scale", numeric_scale.to(torch.float32).reshape(1, -1))
        self.vocabularies = vocabularies
        self.user_buckets = user_buckets
        self.item_buckets = item_buckets
        self.reference_position = reference_position
        self.max_position = max_position
        self.logit_offset = logit_offset
        self.clip = clip

    @torch.jit.export
    def hash_ids(self, ids: list[str], buckets: int) -> Tensor:
        """FNV-1a (32 bit) over the UTF-8 bytes of each id, modulo ``buckets`` (TorchScript strings are UTF-8)."""
        out: list[int] = []
        for text in ids:
            value = 2166136261  # FNV_OFFSET (TorchScript needs the literals here)
            for char in text:
                value = ((value ^ ord(char)) * 16777619) & 0xFFFFFFFF  # FNV_PRIME, 32-bit mask
            out.append(value % buckets)
        return torch.tensor(out, dtype=torch.int64)

    @torch.jit.export
    def encode_categories(self, categorical: list[list[str]], rows: int) -> Tensor:
        """Category codes (rows, C); 0 for a missing or unknown value."""
        codes = torch.zeros(rows, len(self.vocabularies), dtype=torch.int64)
        for index, vocabulary in enumerate(self.vocabularies):
            values = categorical[index]
            if len(values) != rows:
                raise ValueError("every categorical column needs one value per row")
            column: list[int] = []
            for value in values:
                column.append(vocabulary.get(value, 0))
            codes[:, index] = torch.tensor(column, dtype=torch.int64)
        return codes

    @torch.jit.export
    def prepare_numeric(self, numeric: Tensor) -> Tensor:
        """Signed log1p, standardise, fill missing with the training mean (0), clip; append missing flags."""
        numeric = numeric.to(torch.float32)
        missing = torch.isnan(numeric)
        squashed = torch.sign(numeric) * torch.log1p(torch.abs(numeric))
        scaled = (squashed - self.numeric_center) / self.numeric_scale
        scaled = torch.where(missing, torch.zeros_like(scaled), scaled).clamp(-self.clip, self.clip)
        return torch.cat([scaled, missing.to(torch.float32)], dim=1)

    @torch.jit.export
    def score_encoded(
        self,
        user_bucket: Tensor,
        item_bucket: Tensor,
        numeric: Tensor,
        category_codes: Tensor,
        position: Tensor | None = None,
    ) -> Tensor:
        """Click probabilities from hashed ids, raw numeric features (NaN = missing) and category codes."""
        logit = self.net(user_bucket, item_bucket, self.prepare_numeric(numeric), category_codes) + self.logit_offset
        if position is None:
            position_index = torch.full_like(user_bucket, self.reference_position)
        else:
            position_index = position.to(torch.int64).clamp(0, self.max_position)
        return torch.sigmoid(logit + self.net.position_logit(position_index))

    def forward(
        self,
        user_ids: list[str],
        item_ids: list[str],
        numeric: Tensor,
        categorical: list[list[str]],
        position: Tensor | None = None,
    ) -> Tensor:
        rows = len(user_ids)
        if len(item_ids) != rows or numeric.shape[0] != rows:
            raise ValueError("user_ids, item_ids and numeric need the same number of rows")
        if numeric.shape[1] != len(self.numeric_features):
            raise ValueError("numeric needs one column per entry of numeric_features")
        if len(categorical) != len(self.categorical_features):
            raise ValueError("categorical needs one list per entry of categorical_features")
        return self.score_encoded(
            self.hash_ids(user_ids, self.user_buckets),
            self.hash_ids(item_ids, self.item_buckets),
            numeric,
            self.encode_categories(categorical, rows),
            position,
        )
