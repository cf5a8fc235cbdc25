"""The ViDoRe task: queries against a whole page corpus, pages as reranker items, scored by the official measure."""

from __future__ import annotations

from mmrerank.core.items import RetrievalTask
from mmrerank.core.run import Run
from mmrerank.datasets.vidore import ViDoReDataset
from mmrerank.evaluation.page_items import PageItems


class ViDoReTask(RetrievalTask):
    """Queries against the whole page corpus, scored by the dataset's official measure (plus `measures` asked for)."""

    def __init__(self, dataset: ViDoReDataset, page_text: bool = False) -> None:
        pages = PageItems(dataset.page_ids, dataset.images, dataset.page_text if page_text else None)
        super().__init__(f"vidore/{dataset.name}", dataset.queries, pages, dataset.qrels)
        self.dataset = dataset

    @property
    def direction(self) -> str:
        return "vidore"

    def measure(self, run: Run, measures=()) -> dict[str, float]:
        names = [self.dataset.main_measure, *[m for m in ("nDCG@10", "R@1", "R@5", "R@10") if m not in measures]]
        return super().measure(run, list(dict.fromkeys([*names, *measures])))
