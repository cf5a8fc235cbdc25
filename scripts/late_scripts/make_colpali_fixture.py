"""Run colpali-engine's own MaxSim scorer and hierarchical token pooler on seeded vectors; save inputs and outputs.

Run in a venv with colpali-engine installed (`pip install colpali-engine`), from the repository root:
    /work/venvs/late-colpali/bin/python scripts/late_scripts/make_colpali_fixture.py
Writes tests/fixtures/colpali_late.pt (tensors only: `torch.load(..., weights_only=True)` reads it).
"""

import torch
from colpali_engine.compression.token_pooling import HierarchicalTokenPooler
from colpali_engine.utils.processing_utils import BaseVisualRetrieverProcessor


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def main() -> None:
    gen = torch.Generator().manual_seed(29)
    dim = 16
    # Non-negative vectors: colpali-engine pads documents with zero vectors inside a batch, which adds a 0 to each
    # MaxSim's candidates; with non-negative similarities that 0 never wins, so its scores are the exact MaxSim.
    # Rounded to float16 values, which the index stores exactly, so both sides score the same numbers.
    lengths = torch.randint(3, 40, (37,), generator=gen)
    docs = [unit(torch.rand(int(n), dim, generator=gen)).half().float() for n in lengths]
    queries = [unit(torch.rand(int(n), dim, generator=gen)) for n in torch.randint(1, 9, (11,), generator=gen)]
    docs.append(docs[5].clone())  # an exact tie between two documents
    scores = BaseVisualRetrieverProcessor.score_multi_vector(queries, docs, batch_size=8, device="cpu")
    # Signed vectors for pooling (the pooler has no padding quirk).
    pool_in = [unit(torch.randn(int(n), dim, generator=gen)) for n in torch.randint(2, 30, (9,), generator=gen)]
    pooler = HierarchicalTokenPooler()
    pooled = {f"pooled_{f}": pooler.pool_embeddings(pool_in, pool_factor=f) for f in (2, 3)}
    torch.save({"docs": docs, "queries": queries, "scores": scores, "pool_in": pool_in, **pooled},
               "tests/fixtures/colpali_late.pt")
    print("scores", tuple(scores.shape), "pooled", [len(p) for p in pooled["pooled_3"]])


if __name__ == "__main__":
    main()
