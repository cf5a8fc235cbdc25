"""The first stage: the faiss index, dual encoders (open_clip), BM25, and hard-negative mining."""
