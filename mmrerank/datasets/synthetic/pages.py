"""Synthetic document pages: the offline stand-in for MMDocIR, written in MMDocIR's own file formats.

Each document is about one fictional entity in one of MMDocIR's 10 domains. Its pages hold a title, paragraphs
of facts ("The population of Varn reached 4,210 in 2018."), tables of facts and figure boxes, drawn with PIL, so
the OCR text is known exactly. Questions paraphrase one fact ("How many people lived in Varn in 2018?"); the
gold page is the one that states it. Lexical matching is made insufficient on purpose: every page repeats the
entity, the other pages reuse the same years and numbers in other facts, and a question shares few words with
its fact beyond the entity, year and unit.

Files (as the real benchmark ships them): `MMDocIR_annotations.jsonl` (one line per document: doc_name, domain,
page_indices [start, end] inclusive rows of the pages file, layout_indices, questions [{Q, A, type, page_id,
layout_mapping [{page, page_size, bbox}]}]), `MMDocIR_pages.parquet` (doc_name, domain, passage_id, image_path,
image_binary (JPEG), ocr_text, vlm_text) and `MMDocIR_layouts.parquet` (doc_name, domain, passage_id, type,
bbox, ocr_text). Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from mmrerank.core.io import cache_root, generate_folder_once

DOMAINS = ["Academic paper", "Financial report", "Government", "Laws", "Research report / Introduction",
           "Guidebook", "Tutorial/Workshop", "Brochure", "Administration/Industry file", "News"]
SYLLABLES = ["var", "lor", "mek", "tis", "ban", "qu", "dro", "ell", "fen", "gar", "hal", "ix", "jor", "kel", "mun",
             "nor", "pel", "ros", "sal", "tor", "ul", "vin", "wes", "yar", "zen"]

# (attribute, statement, question, table label): the question paraphrases the statement.
FACTS = [
    ("population", "The population of {e} reached {v} in {y}.", "How many people lived in {e} in {y}?",
     "Inhabitants"),
    ("revenue", "{e} reported revenue of {v} million dollars in {y}.",
     "What were the earnings of {e} in {y}, in millions?", "Income (M$)"),
    ("staff", "In {y}, {e} employed {v} staff members.", "What was the size of the workforce at {e} in {y}?",
     "Personnel"),
    ("budget", "The annual budget of {e} for {y} was {v} thousand euros.",
     "How much money did {e} plan to spend in {y}?", "Spending plan (k EUR)"),
    ("students", "{v} students enrolled at {e} in {y}.", "What was the enrolment at {e} in {y}?", "Enrolment"),
    ("exports", "{e} exported goods worth {v} million in {y}.",
     "What was the value of shipments abroad from {e} in {y}?", "Shipments abroad (M)"),
    ("visitors", "Some {v} tourists came to {e} during {y}.", "How many people visited {e} in {y}?",
     "Arrivals"),
    ("patents", "{e} filed {v} patent applications in {y}.",
     "How many inventions did {e} try to protect in {y}?", "Filings"),
]
FILLER = ["This section summarises the main developments of {e}.", "Further details are given in the appendix.",
          "The figures below were compiled by the statistics office of {e}.",
          "Readers should compare these values with earlier editions.",
          "Methodological notes on {e} are provided at the end of the document."]
PAGE_W, PAGE_H = 256, 320
TEXT_TOP = 40


@dataclass
class PagesConfig:
    """Size and seed of the synthetic document-page benchmark.

    Attributes:
        seed: generation seed.
        documents: number of documents (spread over the 10 domains).
        pages: (min, max) pages per document.
        questions: questions per document.
        root: cache folder; default `$MMRERANK_CACHE/synthetic-pages` or `~/.cache/mmrerank/synthetic-pages`.
    """

    seed: int = 0
    documents: int = 60
    pages: tuple[int, int] = (6, 10)
    questions: int = 4
    root: str | None = None

    def folder(self) -> Path:
        root = Path(self.root) if self.root else cache_root() / "synthetic-pages"
        return root / f"s{self.seed}-d{self.documents}-p{self.pages[0]}-{self.pages[1]}-q{self.questions}"


def _name(rng: np.random.Generator) -> str:
    return "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=9)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


def _document(rng: np.random.Generator, domain: str, doc_name: str, n_pages: int, n_questions: int):
    """Blocks per page, plus the questions (each pointing at the block that answers it)."""
    entity = _name(rng)
    years = sorted(rng.choice(np.arange(2010, 2024), size=3, replace=False).tolist())
    values = [f"{int(v):,}" for v in rng.integers(120, 9800, size=4)]
    # every (attribute, year) gets a value from a small shared pool: the same numbers recur across pages
    attributes = rng.choice(len(FACTS), size=min(len(FACTS), 3 + n_pages // 2), replace=False).tolist()
    facts = [(a, y, str(rng.choice(values))) for a in attributes for y in years]  # each (attribute, year) once
    rng.shuffle(facts)
    pages: list[list[dict]] = [[{"type": "title", "text": f"{entity}: {domain} {years[-1]}"}]]
    per_page = max(1, len(facts) // (n_pages - 1))
    chunks = [facts[i * per_page:(i + 1) * per_page] for i in range(n_pages - 1)]
    for chunk in chunks:
        blocks = [{"type": "title", "text": f"{entity} - section {len(pages)}"}]
        style = rng.choice(["text", "text", "table", "figure"])
        if style == "table" and len(chunk) >= 2:
            rows = [[FACTS[a][3], str(y), v] for a, y, v in chunk]
            blocks.append({"type": "table", "rows": rows, "facts": chunk,
                           "text": " ".join(" ".join(r) for r in rows)})
        else:
            for i, (a, y, v) in enumerate(chunk):
                kind = "figure" if style == "figure" and i == 0 else "text"
                sentence = FACTS[a][1].format(e=entity, v=v, y=y)
                blocks.append({"type": kind, "text": sentence, "facts": [(a, y, v)]})
        blocks.append({"type": "text", "text": str(rng.choice(FILLER)).format(e=entity), "facts": []})
        pages.append(blocks)
    answerable = [(p, b, f) for p, blocks in enumerate(pages) for b, block in enumerate(blocks)
                  for f in block.get("facts", [])]
    picked = rng.choice(len(answerable), size=min(n_questions, len(answerable)), replace=False)
    questions = []
    for i in picked.tolist():
        p, b, (a, y, v) = answerable[i]
        # (attribute, year) is stated once in a document, so this page is the only gold page
        kind = pages[p][b]["type"]
        questions.append({"Q": FACTS[a][2].format(e=entity, y=y), "A": v, "page": p, "block": b,
                          "type": {"table": "['Table']", "figure": "['Figure']"}.get(kind, "text-only")})
    return pages, questions


def _render(blocks: list[dict], font) -> tuple[bytes, str, list[list[int]]]:
    """Draw a page; returns JPEG bytes, the page's OCR text (everything drawn, in reading order), block boxes."""
    img = Image.new("RGB", (PAGE_W, PAGE_H), "white")
    draw = ImageDraw.Draw(img)
    y, boxes, texts = 12, [], []
    for block in blocks:
        top = y
        if block["type"] == "title":
            draw.text((12, y), block["text"], fill="black", font=font)
            texts.append(block["text"])
            y += 18
        elif block["type"] == "table":
            for row in block["rows"]:
                x = 12
                for cell, width in zip(row, (110, 50, 60)):
                    draw.rectangle([x, y, x + width, y + 13], outline="gray")
                    draw.text((x + 3, y + 2), cell, fill="black", font=font)
                    x += width
                texts.append(" ".join(row))
                y += 14
            y += 6
        else:
            lines = _wrap(draw, block["text"], font, PAGE_W - 40 if block["type"] == "figure" else PAGE_W - 24)
            if block["type"] == "figure":  # a framed box with a bar, its caption inside
                draw.rectangle([12, y, PAGE_W - 12, y + 30 + 11 * len(lines)], outline="navy")
                draw.rectangle([20, y + 6, 20 + 60 + len(block["text"]) % 100, y + 22], fill="steelblue")
                y += 28
                for line in lines:
                    draw.text((20, y), line, fill="navy", font=font)
                    y += 11
                y += 8
            else:
                for line in lines:
                    draw.text((12, y), line, fill="black", font=font)
                    y += 11
                y += 6
            texts.append(block["text"])
        boxes.append([12, top, PAGE_W - 12, min(y, PAGE_H)])
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "\n".join(texts), boxes


def generate(config: PagesConfig, out: Path) -> None:
    """Write the three MMDocIR files into `out`."""
    rng = np.random.default_rng([config.seed, 11])
    font = _font()
    page_rows: dict[str, list] = {k: [] for k in ("doc_name", "domain", "passage_id", "image_path", "image_binary",
                                                   "ocr_text", "vlm_text")}
    layout_rows: dict[str, list] = {k: [] for k in ("doc_name", "domain", "passage_id", "type", "bbox", "ocr_text")}
    lines = []
    for d in range(config.documents):
        domain = DOMAINS[d % len(DOMAINS)]
        doc_name = f"synthetic_{d:04d}.pdf"
        n_pages = int(rng.integers(config.pages[0], config.pages[1] + 1))
        pages, questions = _document(rng, domain, doc_name, n_pages, config.questions)
        page_start, layout_start = len(page_rows["doc_name"]), len(layout_rows["doc_name"])
        page_boxes = []
        for p, blocks in enumerate(pages):
            jpeg, text, boxes = _render(blocks, font)
            page_boxes.append(boxes)
            for col, value in zip(page_rows, (doc_name, domain, p, f"{doc_name}/{p}.jpg", jpeg, text, text)):
                page_rows[col].append(value)
            for block, box in zip(blocks, boxes):
                for col, value in zip(layout_rows, (doc_name, domain, p, block["type"], box, block["text"])):
                    layout_rows[col].append(value)
        lines.append({"doc_name": doc_name, "domain": domain,
                      "page_indices": [page_start, len(page_rows["doc_name"]) - 1],
                      "layout_indices": [layout_start, len(layout_rows["doc_name"]) - 1],
                      "questions": [{"Q": q["Q"], "A": q["A"], "page_id": [q["page"]], "type": q["type"],
                                     "layout_mapping": [{"page": q["page"], "page_size": [PAGE_W, PAGE_H],
                                                         "bbox": page_boxes[q["page"]][q["block"]]}]}
                                    for q in questions]})
    pq.write_table(pa.table(page_rows), out / "MMDocIR_pages.parquet")
    pq.write_table(pa.table(layout_rows), out / "MMDocIR_layouts.parquet")
    (out / "MMDocIR_annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def ensure_pages(config: PagesConfig | None = None) -> Path:
    """The folder holding the three files, generated once (atomically) if absent."""
    config = config or PagesConfig()
    return generate_folder_once(config.folder(), "MMDocIR_annotations.jsonl", lambda tmp: generate(config, tmp))
