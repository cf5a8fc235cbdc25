"""The ViDoRe task: queries against a whole page corpus, pages as reranker items, scored by the official measure."""

from __future__ import annotations

from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import Run
from mmrerank.datasets.vidore import ViDoReDataset


class ViDoRePages:
    """A ViDoRe corpus as reranker items: item i is page i's `Page` (its image; its text only with `text`)."""

    modality = "page"

    def __init__(self, dataset: ViDoReDataset, text: bool = False) -> None:
        self.dataset, self.text = dataset, text

    @property
    def ids(self) -> list[str]:
        return self.dataset.page_ids

    def __len__(self) -> int:
        return len(self.dataset.page_ids)

    def __getitem__(self, i: int):
        from mmrerank.rerankers.mllm import Page

        has_text = self.text and self.dataset.page_text is not None
        return Page(self.dataset.images[i], self.dataset.page_text[i] if has_text else "")


class ViDoReTask(RetrievalTask):
    """Queries against the whole page corpus, scored by the dataset's official measure (plus `measures` asked for)."""

    def __init__(self, dataset: ViDoReDataset, page_text: bool = False) -> None:
        super().__init__(f"vidore/{dataset.name}", dataset.queries, ViDoRePages(dataset, page_text), dataset.qrels)
        self.dataset = dataset

    @property
    def direction(self) -> str:
        return "vidore"

    def measure(self, run: Run, measures=()) -> dict[str, float]:
        names = [self.dataset.main_measure, *[m for m in ("nDCG@10", "R@1", "R@5", "R@10") if m not in measures]]
        return super().measure(run, list(dict.fromkeys([*names, *measures])))
