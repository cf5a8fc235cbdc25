"""`mmrerank rerank / evaluate / index / search` on a user's own files: ids paired by id from the files, missing ids
refused before the reranker is built, a resumed rerank scores only what is missing, and the held-out check (a
reranker that knows the answers, through the command, reaches the run's recall at its depth)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrerank.cli import SUBCOMMANDS, main
from mmrerank.commands.rerank import rerank
from mmrerank.core.metrics import evaluate
from mmrerank.core.run import Run

ROOT = Path(__file__).resolve().parents[1]
ORACLE = "tests.helpers.oracle.QrelsOracle"


@pytest.fixture(autouse=True)
def helpers_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `tests.helpers.oracle` by import path, however pytest was started


def user_data(root: Path, n_images: int = 60, captions_per_image: int = 2, depth: int = 20, seed: int = 0) -> dict:
    """A user's own data: PNGs named as a camera would, a captions TSV, qrels and their retriever's run file.

    The run lists queries and candidates in orders that match neither the folder listing nor the TSV; each caption's
    image is among its `depth` candidates with probability 0.85, at a random rank.
    """
    rng = random.Random(seed)
    images = root / "photos"
    images.mkdir()
    names = [f"IMG_{n:04d}" for n in rng.sample(range(10000), n_images)]
    for name in names:
        Image.new("RGB", (8, 8), tuple(rng.randrange(256) for _ in range(3))).save(images / f"{name}.png")
    captions = [(f"c{rng.randrange(10**6):06d}-{i}", names[i // captions_per_image])
                for i in range(n_images * captions_per_image)]
    tsv = [f"{cid}\ta photo, number {i}\n" for i, (cid, _) in enumerate(captions)]
    rng.shuffle(tsv)
    (root / "captions.tsv").write_text("".join(tsv))
    (root / "qrels.txt").write_text("".join(f"{cid} 0 {gold} 1\n" for cid, gold in captions))
    lines, hits = [], 0
    order = list(captions)
    rng.shuffle(order)
    for cid, gold in order:
        candidates = rng.sample([n for n in names if n != gold], depth)
        if rng.random() < 0.85:
            candidates[rng.randrange(depth)] = gold
            hits += 1
        lines += [f"{cid} Q0 {doc} {r + 1} {depth - r:.1f} their-retriever\n" for r, doc in enumerate(candidates)]
    (root / "my_first_stage.trec").write_text("".join(lines))
    return {"images": images, "captions": root / "captions.tsv", "qrels": root / "qrels.txt",
            "run": root / "my_first_stage.trec", "recall": hits / len(captions)}


def rerank_args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["rerank", f"--run={data['run']}", f"--queries={data['captions']}", f"--corpus={data['images']}",
            f"--reranker={ORACLE}", f"--reranker.init_args.qrels={data['qrels']}", f"--output={out}",
            "--rerank_depth=20", "--progress=false", *extra]


def test_held_out_check(tmp_path, capsys):
    data = user_data(tmp_path)
    out = tmp_path / "reranked.trec"
    main(rerank_args(data, out, f"--qrels={data['qrels']}", "--measures=[Success@1,nDCG@10]"))
    printed = capsys.readouterr().out
    assert "| first stage |" in printed and "| QrelsOracle |" in printed
    reranked, first = Run.read_trec(out).to_dict(), Run.read_trec(data["run"]).to_dict()
    assert list(reranked) == list(first)
    assert all(set(reranked[q]) == set(first[q]) for q in first)  # exactly the run's candidates, no others
    success = evaluate(reranked, str_qrels(data["qrels"]), ["Success@1"])["Success@1"]
    # an oracle puts the gold image first wherever the run has it: Success@1 equals the run's recall at 20
    assert success == pytest.approx(data["recall"]) and success >= 0.80
    assert evaluate(first, str_qrels(data["qrels"]), ["Success@1"])["Success@1"] < 0.2
    assert f"| QrelsOracle | {success:.4f} |" in printed
    assert not Path(str(out) + ".work").exists()  # the shards are gone once the output is written


def str_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        q, _, d, g = line.split()
        out.setdefault(q, {})[d] = int(g)
    return out


@pytest.mark.parametrize("side", ["queries", "corpus"])
def test_missing_ids_are_refused_before_the_reranker_is_built(tmp_path, capsys, side):
    data = user_data(tmp_path, n_images=6, depth=4)
    if side == "queries":
        kept = data["captions"].read_text().splitlines()[1:]
        data["captions"].write_text("\n".join(kept) + "\n")
        missing = next(line.split()[0] for line in data["qrels"].read_text().splitlines()
                       if line.split()[0] not in {k.split("\t")[0] for k in kept})
    else:
        victim = sorted(data["images"].iterdir())[0]
        victim.unlink()
        missing = victim.stem
    args = rerank_args(data, tmp_path / "out.trec")
    args[4:6] = ["--reranker=tests.helpers.oracle.Exploding"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    message = capsys.readouterr().err
    flag = "--queries" if side == "queries" else "--corpus"
    source = data["captions"] if side == "queries" else data["images"]
    assert f"{flag} {source}" in message and repr(missing) in message and str(data["run"]) in message
    assert "the reranker was built" not in message and not (tmp_path / "out.trec").exists()


def test_a_resumed_rerank_scores_only_the_missing_shards(tmp_path):
    from tests.helpers.oracle import QrelsOracle

    data = user_data(tmp_path, n_images=10, depth=5)  # 20 queries: 4 shards of 5
    out, calls = tmp_path / "out.trec", tmp_path / "calls.txt"
    common = dict(run=str(data["run"]), queries=str(data["captions"]), corpus=str(data["images"]), output=str(out),
                  rerank_depth=5, batch_size=5, shard_size=5, progress=False)
    # batch_size 5 at depth 5: one query per scoring call, so the oracle fails in the third shard
    with pytest.raises(KeyboardInterrupt):
        rerank(reranker=QrelsOracle(str(data["qrels"]), str(calls), fail_after=12), **common)
    work = Path(str(out) + ".work")
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-00000.trec", "shard-00001.trec"]
    calls.unlink()
    resumed = rerank(reranker=QrelsOracle(str(data["qrels"]), str(calls)), **common)
    first = Run.read_trec(data["run"])
    assert calls.read_text().split() == first.query_ids[10:]  # shards 0 and 1 were not scored again
    fresh = rerank(reranker=QrelsOracle(str(data["qrels"])), **{**common, "output": str(tmp_path / "fresh.trec")})
    assert out.read_text() == (tmp_path / "fresh.trec").read_text()
    assert resumed.to_dict() == fresh.to_dict()


def test_a_work_folder_of_other_settings_is_not_reused(tmp_path):
    from tests.helpers.oracle import QrelsOracle

    data = user_data(tmp_path, n_images=6, depth=4)
    common = dict(run=str(data["run"]), queries=str(data["captions"]), corpus=str(data["images"]),
                  output=str(tmp_path / "out.trec"), batch_size=4, shard_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        rerank(reranker=QrelsOracle(str(data["qrels"]), fail_after=5), rerank_depth=4, **common)  # after shard 0
    with pytest.raises(ValueError, match="another rerank_depth"):
        rerank(reranker=QrelsOracle(str(data["qrels"])), rerank_depth=3, **common)
    shutil.rmtree(tmp_path / "out.trec.work")
    with pytest.raises(KeyboardInterrupt):  # stopped before its first shard: nothing to keep, the next run starts
        rerank(reranker=QrelsOracle(str(data["qrels"]), fail_after=0), rerank_depth=4, **common)
    rerank(reranker=QrelsOracle(str(data["qrels"])), rerank_depth=3, **common)
    assert (tmp_path / "out.trec").is_file()


def test_jsonl_queries_and_run(tmp_path):
    data = user_data(tmp_path, n_images=6, depth=4)
    pairs = [line.split("\t") for line in data["captions"].read_text().splitlines()]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in pairs))
    run = Run.read_trec(data["run"]).to_dict()
    (tmp_path / "run.jsonl").write_text("".join(json.dumps({"query_id": q, "doc_id": d, "score": s}) + "\n"
                                                for q, cands in run.items() for d, s in cands.items()))
    main(["rerank", f"--run={tmp_path / 'run.jsonl'}", f"--queries={tmp_path / 'q.jsonl'}",
          f"--corpus={data['images']}", f"--reranker={ORACLE}", f"--reranker.qrels={data['qrels']}",
          f"--output={tmp_path / 'a.trec'}", "--progress=false"])
    main(rerank_args(data, tmp_path / "b.trec"))
    assert (tmp_path / "a.trec").read_text() == (tmp_path / "b.trec").read_text()


def grey(value: int) -> Image.Image:
    return Image.new("RGB", (16, 16), (value,) * 3)


def test_image_folder_queries_and_a_pdf_pages_corpus(tmp_path):
    queries, pages = tmp_path / "queries", tmp_path / "pages"
    queries.mkdir()
    pages.mkdir()
    grey(10).save(queries / "q1.png")
    grey(0).save(pages / "report.pdf", format="PDF", save_all=True, append_images=[grey(255)])  # 2 pages
    grey(128).save(pages / "cover.png")
    (tmp_path / "run.trec").write_text("q1 Q0 report#0 1 3 bm25\nq1 Q0 cover 2 2 bm25\nq1 Q0 report#1 3 1 bm25\n")
    main(["rerank", f"--run={tmp_path / 'run.trec'}", f"--queries={queries}", f"--corpus={pages}",
          "--reranker=tests.helpers.oracle.Brightness", f"--output={tmp_path / 'out.trec'}", "--progress=false"])
    ranked = [line.split()[2] for line in (tmp_path / "out.trec").read_text().splitlines()]
    assert ranked == ["report#1", "cover", "report#0"]  # the white page, the grey image, the black page


def test_fusion_with_the_first_stage(tmp_path):
    from tests.helpers.oracle import QrelsOracle

    data = user_data(tmp_path, n_images=6, depth=4)
    common = dict(run=str(data["run"]), queries=str(data["captions"]), corpus=str(data["images"]), rerank_depth=4,
                  progress=False)
    # a weight far above the oracle's 0/1 scores: the first stage's order comes back
    fused = rerank(reranker=QrelsOracle(str(data["qrels"])), alpha=100.0, output=str(tmp_path / "f.trec"), **common)
    first = Run.read_trec(data["run"]).to_dict()
    assert {q: list(c) for q, c in fused.to_dict().items()} == {q: list(c) for q, c in first.items()}


def test_evaluate(tmp_path, capsys):
    (tmp_path / "run.trec").write_text("a Q0 x 1 3 t\na Q0 y 2 2 t\nb Q0 x 1 3 t\nb Q0 z 2 2 t\n")
    (tmp_path / "qrels.txt").write_text("a 0 x 1\nb 0 z 1\nc 0 x 1\n")
    main(["evaluate", f"--run={tmp_path / 'run.trec'}", f"--qrels={tmp_path / 'qrels.txt'}",
          "--measures=[Success@1,Success@2,RR]"])
    printed = capsys.readouterr().out
    # by hand: a finds its doc first, b second, c (judged, not in the run) nothing: 1/3, 2/3, (1 + 1/2) / 3
    assert "| run.trec | 0.3333 | 0.6667 | 0.5000 |" in printed


def test_evaluate_warns_when_run_and_qrels_share_no_query(tmp_path):
    (tmp_path / "run.trec").write_text("a Q0 x 1 3 t\n")
    (tmp_path / "qrels.txt").write_text("0 0 x 1\n")
    from mmrerank.commands.search import evaluate as evaluate_command

    with pytest.warns(UserWarning, match="share no query"):
        evaluate_command(str(tmp_path / "run.trec"), str(tmp_path / "qrels.txt"))


def test_index_and_search_round_trip(tmp_path, capsys):
    from mmrerank.retrieval.clip import CLIPEncoder

    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "encoder")
    torch.manual_seed(1)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "other")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(6):
        Image.effect_noise((32, 32), 60 + 10 * i).convert("RGB").rotate(rng.randrange(360)).save(corpus / f"p{i}.png")
    main(["index", f"--corpus={corpus}", f"--output={tmp_path / 'index'}",
          f"--first_stage.checkpoint={tmp_path / 'encoder'}", "--progress=false"])
    record = json.loads((tmp_path / "index" / "encoder.json").read_text())
    assert record["count"] == 6 and record["encoder"]["checkpoint"]["sha256"]
    # the corpus's own images as queries: each finds itself first (the same encoder, the same image)
    main(["search", f"--index={tmp_path / 'index'}", f"--queries={corpus}", f"--output={tmp_path / 'run.trec'}",
          "--depth=3", "--progress=false"])
    run = Run.read_trec(tmp_path / "run.trec")
    assert run.depth == 3 and [next(iter(c)) for c in run.to_dict().values()] == [f"p{i}" for i in range(6)]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["search", f"--index={tmp_path / 'index'}", f"--queries={corpus}", f"--output={tmp_path / 'x.trec'}",
              f"--first_stage.checkpoint={tmp_path / 'other'}", "--progress=false"])
    assert "do not share a space" in capsys.readouterr().err and not (tmp_path / "x.trec").exists()


def test_help_lists_every_subcommand(capsys):
    main(["--help"])
    printed = capsys.readouterr().out.splitlines()
    for name in ["benchmark", "precompute", "scaling", "rerank", "evaluate", "index", "search", "fit", "validate",
                 "test", "predict"]:
        assert any(line.split()[:1] == [name] and len(line.split()) > 2 for line in printed), name
    assert set(SUBCOMMANDS) == {"benchmark", "precompute", "scaling", "rerank", "evaluate", "index", "search"}


def caption_folder(root: Path) -> Path:
    """An imagefolder caption table: three PNGs and `metadata.jsonl` with two captions each."""
    root.mkdir()
    for i, value in enumerate((0, 120, 255)):
        grey(value).save(root / f"shot_{i}.png")
    (root / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"shot_{i}.png", "captions": [f"shot {i} first", f"shot {i} second"]}) + "\n"
        for i in range(3)))
    return root


def caption_parquet(folder: Path) -> Path:
    """The same table as a parquet file with an HF Image column (encoded bytes and the file's name)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    images = [{"bytes": (folder / r["file_name"]).read_bytes(), "path": r["file_name"]} for r in rows]
    path = folder.parent / "table.parquet"
    pq.write_table(pa.table({"image": images, "captions": [r["captions"] for r in rows]}), path)
    return path


@pytest.mark.parametrize("layout", ["imagefolder", "parquet"])
def test_caption_table_gives_captions_as_queries_and_images_as_corpus(tmp_path, layout):
    table = caption_folder(tmp_path / "table")
    if layout == "parquet":
        table = caption_parquet(table)
    captions = [f"shot_{i}#{j}" for i in range(3) for j in range(2)]
    (tmp_path / "run.trec").write_text("".join(f"{c} Q0 shot_{d} {d + 1} {3 - d} bm25\n" for c in captions
                                               for d in range(3)))
    (tmp_path / "qrels.txt").write_text("".join(f"{c} 0 {c.split('#')[0]} 1\n" for c in captions))
    main(["rerank", f"--run={tmp_path / 'run.trec'}", f"--queries={table}", f"--corpus={table}",
          f"--reranker={ORACLE}", f"--reranker.qrels={tmp_path / 'qrels.txt'}", f"--output={tmp_path / 'out.trec'}",
          "--progress=false"])
    reranked = Run.read_trec(tmp_path / "out.trec").to_dict()
    assert {q: next(iter(c)) for q, c in reranked.items()} == {c: c.split("#")[0] for c in captions}


def test_image_queries_against_a_tsv_corpus(tmp_path):
    """i2t: query images by file name, captions from a TSV; Brightness is not defined on texts, the oracle is."""
    table = caption_folder(tmp_path / "table")
    (tmp_path / "texts.tsv").write_text("t-dark\ta dark photo\nt-light\ta light photo\n")
    (tmp_path / "run.trec").write_text("shot_0 Q0 t-light 1 2 x\nshot_0 Q0 t-dark 2 1 x\n"
                                       "shot_2 Q0 t-dark 1 2 x\nshot_2 Q0 t-light 2 1 x\n")
    (tmp_path / "qrels.txt").write_text("shot_0 0 t-dark 1\nshot_2 0 t-light 1\n")
    (table / "metadata.jsonl").unlink()  # a plain folder of images now
    main(["rerank", f"--run={tmp_path / 'run.trec'}", f"--queries={table}", f"--corpus={tmp_path / 'texts.tsv'}",
          f"--reranker={ORACLE}", f"--reranker.qrels={tmp_path / 'qrels.txt'}", f"--output={tmp_path / 'out.trec'}",
          "--progress=false"])
    reranked = Run.read_trec(tmp_path / "out.trec").to_dict()
    assert {q: next(iter(c)) for q, c in reranked.items()} == {"shot_0": "t-dark", "shot_2": "t-light"}


def test_bad_lines_name_the_file_and_line(tmp_path):
    from mmrerank.datasets.files import read_items

    (tmp_path / "q.tsv").write_text("a\tfine\nno tab here\n")
    with pytest.raises(ValueError, match=r"q\.tsv:2: expected 'id<TAB>text'"):
        read_items(tmp_path / "q.tsv", "queries")
    (tmp_path / "q.jsonl").write_text('{"id": "a", "text": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2: no 'id'"):
        read_items(tmp_path / "q.jsonl", "queries")
    folder = tmp_path / "imgs"
    folder.mkdir()
    grey(0).save(folder / "a.png")
    grey(0).save(folder / "a.jpg")
    with pytest.raises(ValueError, match="'a' appears twice"):
        read_items(folder, "corpus")



def _rank_worker(rank: int, size: int, port: int, argv: list[str], calls: str) -> None:
    import os
    import sys

    sys.path.insert(0, str(ROOT))
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_WORLD_SIZE": str(size)})
    torch.set_num_threads(1)
    main([*argv, f"--reranker.calls={calls}.{rank}"])


@pytest.mark.slow
def test_under_torchrun_each_rank_reranks_its_share(tmp_path):
    import socket

    import torch.multiprocessing as mp

    data = user_data(tmp_path, n_images=10, depth=5)  # 20 queries: 4 shards of 5, two per rank
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [*rerank_args(data, tmp_path / "two.trec"), "--shard_size=5"]
    mp.spawn(_rank_worker, args=(2, port, argv, str(tmp_path / "calls")), nprocs=2, join=True)
    main([*rerank_args(data, tmp_path / "one.trec"), "--shard_size=5"])
    assert (tmp_path / "two.trec").read_text() == (tmp_path / "one.trec").read_text()
    queries = Run.read_trec(data["run"]).query_ids
    for rank, shards in ((0, (0, 2)), (1, (1, 3))):
        scored = (tmp_path / f"calls.{rank}").read_text().split()
        assert scored == [q for s in shards for q in queries[5 * s:5 * s + 5]]


def test_a_real_reranker_by_class_path_scores_the_items_the_ids_name(tmp_path):
    """A tiny untrained EDJE built by `--reranker mmrerank.rerankers.edje.EDJEReranker --reranker.model FOLDER`: each
    reranked query's order equals the order of the model's own scores of (that caption, those image files)."""
    from mmrerank.rerankers.edje import EDJE, EDJEConfig, EDJEReranker, build_wordpiece_tokenizer
    from mmrerank.retrieval.clip import CLIPEncoder

    torch.manual_seed(0)
    CLIPEncoder("mmrerank-tiny-resnet").save_pretrained(tmp_path / "vision")
    tokenizer = build_wordpiece_tokenizer(["a photo number one two three"] * 3, vocab_size=60)
    config = EDJEConfig(vision="first_stage:mmrerank-tiny-resnet", vision_checkpoint=str(tmp_path / "vision"),
                        patch_dim=512, num_patches=4, num_image_tokens=2, adapter_heads=2, adapter_mlp_ratio=2,
                        patch_positions=True, joint={"hidden_size": 16, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2, "intermediate_size": 32},
                        max_text_len=8)
    EDJE(config, tokenizer).eval().save_pretrained(tmp_path / "edje")
    data = user_data(tmp_path, n_images=8, captions_per_image=1, depth=5)
    main(["rerank", f"--run={data['run']}", f"--queries={data['captions']}", f"--corpus={data['images']}",
          "--reranker=mmrerank.rerankers.edje.EDJEReranker", f"--reranker.model={tmp_path / 'edje'}",
          "--reranker.device=cpu", "--rerank_depth=5", f"--output={tmp_path / 'out.trec'}", "--progress=false"])
    reranked = Run.read_trec(tmp_path / "out.trec").to_dict()
    texts = dict(line.split("\t") for line in data["captions"].read_text().splitlines())
    model = EDJEReranker(str(tmp_path / "edje"), device="cpu")
    for qid, candidates in Run.read_trec(data["run"]).to_dict().items():
        docs = list(candidates)
        scores = model.score([texts[qid]] * len(docs), [Image.open(data["images"] / f"{d}.png") for d in docs])
        expected = [docs[i] for i in torch.sort(scores, descending=True, stable=True).indices.tolist()]
        assert list(reranked[qid]) == expected


def test_jsonl_of_image_paths(tmp_path):
    from mmrerank.datasets.files import read_items

    (tmp_path / "img").mkdir()
    grey(30).save(tmp_path / "img" / "x.png")
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q7", "image": "img/x.png"}) + "\n")
    items = read_items(tmp_path / "q.jsonl", "queries")
    assert items.ids == ["q7"] and items.modality == "image" and items[0].getpixel((0, 0)) == (30, 30, 30)


def test_a_caption_table_has_the_ids_that_caption_table_gives(tmp_path):
    """The command reads a caption table as `CaptionTable` does (one reader): a `caption` column of strings and an
    `id` column that is not the ids (CaptionTable takes ids from file names unless told), ids equal to the API's."""
    from mmrerank.datasets import CaptionTable
    from mmrerank.datasets.files import read_items

    table = caption_folder(tmp_path / "table")
    (table / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"shot_{i}.png", "id": i, "caption": f"shot {i}"}) + "\n" for i in range(3)))
    task = CaptionTable(str(table)).load().task("t2i")
    queries, corpus = read_items(table, "queries"), read_items(table, "corpus")
    assert queries.ids == task.queries.ids and corpus.ids == task.corpus.ids == ["shot_0", "shot_1", "shot_2"]
    assert list(queries) == ["shot 0", "shot 1", "shot 2"]


def readme_python(after: str) -> str:
    """The first ```python block of README.md after the line `after`."""
    text = (ROOT / "README.md").read_text()
    return text[text.index(after):].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_path_gives_the_command_s_ranking(tmp_path, monkeypatch, capsys):
    """README "Rerank your own run": its Python lines (the hub preset swapped for the oracle) on a caption table
    rank as `mmrerank rerank --queries my_images/ --corpus my_images/` does, at the run's recall."""
    import mmrerank
    from tests.helpers.oracle import QrelsOracle

    rng = random.Random(1)
    table = tmp_path / "my_images"
    table.mkdir()
    names = [f"photo_{n:04d}" for n in rng.sample(range(10000), 12)]
    for value, name in enumerate(names):
        grey(20 * value).save(table / f"{name}.png")
    rows = [{"file_name": f"{n}.png", "captions": [f"{n} a", f"{n} b"]} for n in names]
    (table / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    captions = [(f"{n}#{j}", n) for n in names for j in range(2)]
    (tmp_path / "qrels.txt").write_text("".join(f"{c} 0 {n} 1\n" for c, n in captions))
    lines = []
    for c, gold in rng.sample(captions, len(captions)):
        candidates = rng.sample([n for n in names if n != gold], 5) + [gold] * (c.endswith("#0"))
        lines += [f"{c} Q0 {d} {r + 1} {9 - r} mine\n" for r, d in enumerate(rng.sample(candidates, len(candidates)))]
    (tmp_path / "my_first_stage.trec").write_text("".join(lines))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mmrerank, "load_reranker", lambda name: QrelsOracle("qrels.txt"))
    exec(readme_python("The same in Python"), {})
    main(["rerank", "--run=my_first_stage.trec", "--queries=my_images/", "--corpus=my_images/",
          f"--reranker={ORACLE}", "--reranker.qrels=qrels.txt", "--output=cli.trec", "--progress=false"])
    python, cli = Run.read_trec("reranked.trec").to_dict(), Run.read_trec("cli.trec").to_dict()
    assert python == cli and {q: list(c) for q, c in python.items()} == {q: list(cli[q]) for q in python}
    # the gold image first exactly where the run has it (the "#0" captions)
    assert evaluate(python, str_qrels(tmp_path / "qrels.txt"), ["Success@1"])["Success@1"] == 0.5
