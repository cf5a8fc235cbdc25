"""A page corpus as reranker items (MMDocIR's pages, a ViDoRe corpus): item i is page i's `Page`."""

from __future__ import annotations

from collections.abc import Sequence


class PageItems:
    """Item i is page i's `Page`: its image and, where `texts` is given, its text (OCR / markdown; else "").

    Args:
        ids: the page ids; images: the page images (decoded lazily by the dataset); texts: each page's text, or None
            where the rerankers get the image alone.
    """

    modality = "page"

    def __init__(self, ids: Sequence[str], images: Sequence, texts: Sequence[str] | None = None) -> None:
        self.ids, self.images, self.texts = list(ids), images, texts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        from mmrerank.rerankers.mllm import Page

        return Page(self.images[i], self.texts[i] if self.texts is not None else "")
