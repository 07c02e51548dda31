"""Hard negatives mined offline with an approximate-nearest-neighbour index (faiss).

Every ``refresh_every_n_epochs`` the whole training set is embedded, indexed with faiss (exact inner
product on L2-normalised embeddings, i.e. cosine similarity; on the GPU when faiss has one), and for
every item ``i`` the ``num_negatives`` negatives are taken from its neighbours of rank
``rank_min ... rank_max`` (rank 1 = the nearest other item), skipping false negatives:

* items with the same label (when positives are labels), and
* items whose similarity lies within ``margin`` of the positive's: ``sim(i, j) >= sim(i, pos) - margin``.
  The positive's similarity is that of ``i``'s nearest same-label item (exact: from the neighbour list
  when it is there, else by one product with the class), or 1 (``i`` itself) for view positives.

``sampling="top"`` keeps the highest-ranked survivors, ``"random"`` draws them uniformly from the
window. Items with too few survivors are filled with random valid negatives (counted in the stats).
The datamodule then serves each item's mined negatives (:class:`MinedNegativesDataset`), through the
:class:`~contrastlab.negatives.kinds.MiningDataSource` seam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from contrastlab.errors import check_choice
from contrastlab.negatives.candidates import TripletCandidates
from contrastlab.negatives.kinds import MiningDataSource, OfflineMiner
from contrastlab.negatives.miners import Strategy, TripletMiner

Sampling = Literal["top", "random"]


def _index(dim: int, use_gpu: bool) -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not its CPU-feature probing
    import faiss  # imported when mining, not with the package

    index = faiss.IndexFlatIP(dim)
    if use_gpu and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def mine_ann_negatives(
    embeddings: Tensor,
    labels: Tensor | None,
    num_negatives: int = 1,
    rank_min: int = 1,
    rank_max: int = 50,
    margin: float = 0.05,
    sampling: str = "top",
    seed: int = 0,
    use_gpu: bool = True,
    chunk_size: int = 4096,
    progress: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Mined negatives ``(N, num_negatives)`` long for ``embeddings`` (N, D); labels (N,) or None
    (view positives: only the item itself is positive). Returns the table and statistics."""
    n = embeddings.shape[0]
    if not 1 <= rank_min <= rank_max:
        raise ValueError(f"need 1 <= sampler.rank_min <= sampler.rank_max, got {rank_min} and {rank_max}.")
    if rank_max >= n:
        raise ValueError(f"sampler.rank_max={rank_max} must be below the {n} training items; lower sampler.rank_max.")
    check_choice(sampling, Sampling, "sampler.sampling")
    x = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=1).contiguous()
    index = _index(x.shape[1], use_gpu)
    index.add(x.numpy())
    k = rank_max + 1
    sims, nbrs = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    for s in tqdm(range(0, n, chunk_size), desc="ANN mining", disable=not progress, leave=False):
        sims[s : s + chunk_size], nbrs[s : s + chunk_size] = index.search(x[s : s + chunk_size].numpy(), k)
    sim, nbr = torch.from_numpy(sims), torch.from_numpy(nbrs)
    # drop each item itself (normally rank 0; ties may move it): keep the first rank_max others
    not_self = nbr != torch.arange(n)[:, None]
    order = torch.argsort((~not_self).to(torch.int8), dim=1, stable=True)[:, :rank_max]
    sim, nbr = sim.gather(1, order), nbr.gather(1, order)  # ranks 1..rank_max
    if labels is None:
        pos_sim = torch.ones(n)
        same = torch.zeros_like(nbr, dtype=torch.bool)
    else:
        labels = labels.cpu()
        same = labels[nbr] == labels[:, None]
        pos_sim = _nearest_positive_similarity(x, labels, sim, same)
    window = torch.zeros_like(same)
    window[:, rank_min - 1 : rank_max] = True
    valid = window & ~same & (sim < pos_sim[:, None] - margin)
    gen = torch.Generator().manual_seed(seed)
    score = torch.arange(rank_max, dtype=torch.float32).expand(n, -1).clone()
    if sampling == "random":
        score = torch.rand(n, rank_max, generator=gen)
    score[~valid] = float("inf")
    pick = score.argsort(dim=1, stable=True)[:, :num_negatives] if num_negatives <= rank_max else None
    if pick is None:
        raise ValueError(f"sampler.num_negatives={num_negatives} exceeds the window size; raise sampler.rank_max.")
    table = nbr.gather(1, pick)
    ok = valid.gather(1, pick)
    missing = ~ok
    table[missing] = _random_negatives(labels, n, torch.nonzero(missing)[:, 0], gen)
    in_window = valid.sum().item()
    stats = {
        "ann/window_kept_fraction": in_window / max(1, n * (rank_max - rank_min + 1)),
        "ann/random_fill_fraction": missing.float().mean().item(),
        "ann/negative_similarity": (x[table] * x[:, None, :]).sum(-1).mean().item(),
    }
    return table, stats


def _nearest_positive_similarity(x: Tensor, labels: Tensor, sim: Tensor, same: Tensor) -> Tensor:
    """Similarity of each item to its nearest other item of the same label (1, itself, if it has none)."""
    first = same.float().argmax(1)
    pos_sim = torch.where(same.any(1), sim.gather(1, first[:, None]).squeeze(1), torch.tensor(-2.0))
    for i in torch.nonzero(~same.any(1))[:, 0].tolist():  # nearest positive beyond rank_max: one product
        members = torch.nonzero((labels == labels[i]) & (torch.arange(len(labels)) != i))[:, 0]
        pos_sim[i] = (x[members] @ x[i]).max() if members.numel() else 1.0
    return pos_sim


def _random_negatives(labels: Tensor | None, n: int, rows: Tensor, gen: torch.Generator) -> Tensor:
    """One random other item per entry of ``rows`` (with a different label when labels are given)."""
    out = torch.randint(n, (rows.numel(),), generator=gen)
    for _ in range(100):  # rejection sampling; a valid draw has probability >= 1/n per try
        bad = (out == rows) if labels is None else (out == rows) | (labels[out] == labels[rows])
        if not bool(bad.any()):
            return out
        out[bad] = torch.randint(n, (int(bad.sum()),), generator=gen)
    raise ValueError("ANN mining found no possible negative for some items: does the training set have one class?")


class MinedNegativesDataset(Dataset):
    """Adds to each training item of ``base`` its mined negatives: ``"negatives"`` (m, C, H, W) (one
    augmented view each), ``"negative_index"`` (m,) and ``"negative_label"`` (m,). ``table`` is a
    shared (N, m) CPU tensor that the miner refreshes in place (DataLoader workers see the update)."""

    def __init__(self, base: Dataset, table: Tensor) -> None:
        self.base, self.table = base, table

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        idx = self.table[i]
        if bool((idx < 0).any()):
            raise RuntimeError("mined negatives requested before the first ANN mining; call refresh first")
        negs = [self.base[int(j)] for j in idx]
        item["negatives"] = torch.stack([neg["views"][0] for neg in negs])
        item["negative_index"] = idx.clone()
        item["negative_label"] = torch.tensor([int(neg["label"]) for neg in negs])
        return item


class AnnMined(TripletMiner, OfflineMiner):
    """``sampler=ann_mined``: the batch plus every item's mined negatives are the keys; ``mining``
    picks the triplets among them (default ``batch_hard``: each anchor's hardest negative, mined or
    in-batch). The objective drives it (:class:`~contrastlab.negatives.kinds.OfflineMiner`):
    :meth:`attach` at set-up hands the datamodule the table to serve; at fit start and every epoch
    start, when :meth:`due`, :meth:`refresh` with the objective's embedding function. The table is a
    registered buffer (saved in checkpoints)."""

    def __init__(
        self,
        num_negatives: int = 1,
        rank_min: int = 5,
        rank_max: int = 50,
        margin: float = 0.05,
        refresh_every_n_epochs: int = 1,
        sampling: Sampling = "top",
        mining: Strategy = "batch_hard",
        use_gpu: bool = True,
        seed: int = 0,
        gather_across_ranks: bool = True,
    ) -> None:
        super().__init__(mining, gather_across_ranks)
        check_choice(sampling, Sampling, "sampler.sampling")
        if refresh_every_n_epochs < 1:
            raise ValueError(f"sampler.refresh_every_n_epochs must be >= 1, got {refresh_every_n_epochs}.")
        if num_negatives < 1:
            raise ValueError(f"sampler.num_negatives must be >= 1, got {num_negatives}.")
        self.num_negatives, self.rank_min, self.rank_max = num_negatives, rank_min, rank_max
        self.margin, self.refresh_every, self.sampling = margin, refresh_every_n_epochs, sampling
        self.use_gpu, self.seed = use_gpu, seed
        self.register_buffer("table", torch.full((0, num_negatives), -1, dtype=torch.long))
        self.register_buffer("mined_epoch", torch.full((), -1, dtype=torch.long))
        self.shared_table: Tensor | None = None  # CPU shared-memory copy served by the datamodule
        self.positives = "labels"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "table")
        if saved is not None and saved.shape != self.table.shape:
            self.table = torch.full_like(saved, -1, device=self.table.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if saved is not None and self.shared_table is not None:  # a restored table is served as it is
            if self.shared_table.shape != self.table.shape:
                raise ValueError(
                    f"the checkpoint's mined negatives cover {self.table.shape[0]} training items but the training "
                    f"set has {self.shared_table.shape[0]}; resume with the data settings the run was trained with."
                )
            self.shared_table.copy_(self.table.cpu())

    def attach(self, source: MiningDataSource, positives: str) -> None:
        """Size the table for ``source``'s training set (before its train dataloader is built) and hand
        ``source`` the shared copy to serve (:meth:`MiningDataSource.set_mined_negatives`)."""
        self.positives = positives
        n = len(source.train_loader_for_mining().dataset)  # type: ignore[arg-type]
        if self.table.shape[0] != n:
            self.table = torch.full((n, self.num_negatives), -1, dtype=torch.long, device=self.table.device)
            self.mined_epoch.fill_(-1)
        self.shared_table = self.table.cpu().clone().share_memory_()
        source.set_mined_negatives(self.shared_table)

    def due(self, epoch: int, fit_start: bool) -> bool:
        """At fit start: unless a table was mined already (e.g. restored from a checkpoint); at the start
        of ``epoch``: every ``refresh_every_n_epochs`` epochs, once."""
        if fit_start:
            return int(self.mined_epoch) < 0
        return epoch % self.refresh_every == 0 and int(self.mined_epoch) != epoch

    @torch.no_grad()
    def refresh(
        self,
        embed: Callable[[Tensor], Tensor],
        loader: Iterable[dict[str, Any]],
        device: Any,
        epoch: int,
        progress: bool = True,
    ) -> dict[str, float]:
        """Embed the training set (evaluation transform) with ``embed`` and mine a new table."""
        feats, labels = [], []
        for batch in tqdm(loader, desc="ANN embedding", disable=not progress, leave=False):
            feats.append(embed(batch["image"].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]))
        table, stats = mine_ann_negatives(
            torch.cat(feats),
            torch.cat(labels) if self.positives == "labels" else None,
            self.num_negatives,
            self.rank_min,
            self.rank_max,
            self.margin,
            self.sampling,
            self.seed + epoch,
            self.use_gpu,
            progress=progress,
        )
        self.table.copy_(table)
        self.mined_epoch.fill_(epoch)
        if self.shared_table is not None:
            self.shared_table.copy_(table)
        return stats

    def candidates(
        self,
        z: Tensor,
        ids: Tensor,
        labels: Tensor,
        positives: str,
        batch: dict[str, Any],
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> TripletCandidates:
        """Keys: the batch (gathered across ranks), then this rank's mined negatives (``embed``)."""
        cands = super().candidates(z, ids, labels, positives, batch, embed)
        if "negatives" not in batch or embed is None:
            raise ValueError("sampler=ann_mined needs batches with mined 'negatives' and an embed function")
        z_neg = embed(batch["negatives"].flatten(0, 1))
        neg_targets = batch["negative_label" if positives == "labels" else "negative_index"].flatten()
        cands.keys = torch.cat([cands.keys, z_neg.to(cands.keys.dtype)])
        cands.key_targets = torch.cat([cands.key_targets, neg_targets.to(cands.key_targets.device)])
        return cands

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, ranks=[{self.rank_min}, {self.rank_max}], "
            f"margin={self.margin}, "
            f"refresh_every_n_epochs={self.refresh_every}, sampling={self.sampling}, mining={self.strategy}"
        )
