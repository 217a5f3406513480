"""Probe files (grokwatch.probe), the bundled probe, probe selection and `make_probe`."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from grokwatch.errors import ProbeError, UsageError
from grokwatch.probe import Probe, ProbeSample, load_probe, parse_probe_lines
from grokwatch.probe_sources import (
    BUNDLED_NOTE,
    MAX_GROUPS,
    GroupReservoirs,
    bundled_probe,
    make_probe,
    select_probe,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLED_FILE = REPO / "grokwatch" / "data" / "bundled_probe.jsonl"
BUNDLED_GROUPS = ["math", "code", "prose", "science"]


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    """Write records as JSONL and return the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Read a JSONL file into a list of dicts."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# grokwatch.probe -------------------------------------------------------------------------------


def test_load_probe_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ProbeError, match=r"nope\.jsonl: probe file not found; pass an existing"):
        load_probe(missing)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_load_probe_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(ProbeError, match=r"empty\.jsonl: probe file has no samples"):
        load_probe(path)


def test_load_probe_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"\n{"text": "three"}\n')
    with pytest.raises(ProbeError, match=r"bad\.jsonl:3: not valid JSON .*fix or remove the line"):
        load_probe(path)


@pytest.mark.parametrize("group", ["__all__", "__mine"])
def test_load_probe_rejects_reserved_group_names(tmp_path: Path, group: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "ok text"}, {"text": "x y", "group": group}])
    with pytest.raises(
        ProbeError, match=r"p\.jsonl:2: group names starting with '__' are reserved"
    ):
        load_probe(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "   "}, "empty 'text'"),
        ({"body": "no text field"}, "missing string field 'text'"),
        ({"text": "fine", "group": ""}, "'group' must be a non-empty string"),
        ({"text": "fine", "group": 3}, "'group' must be a non-empty string"),
        ({"prompt": "Q: ", "completion": 5}, "'prompt' and 'completion' must both be strings"),
    ],
)
def test_load_probe_rejects_malformed_records(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [record])
    with pytest.raises(ProbeError, match=rf"p\.jsonl:1: .*{message}"):
        load_probe(path)


def test_load_probe_rejects_non_object_lines() -> None:
    with pytest.raises(ProbeError, match=r"src:1: expected a JSON object"):
        parse_probe_lines(['["a list"]'], "src", jsonl=True)


def test_prompt_completion_sample_counts_completion_only(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pc.jsonl",
        [{"prompt": "Q: 2+2? A: ", "completion": "4", "group": "math"}, {"text": "plain"}],
    )
    probe = load_probe(path)
    first, second = probe.samples
    assert first == ProbeSample(text="Q: 2+2? A: 4", group="math", prompt="Q: 2+2? A: ")
    assert first.completion_only and not second.completion_only
    assert second.group == "default"
    # The stored form keeps prompt and completion apart, so a restart reads the same samples.
    assert read_jsonl_text(probe.to_jsonl())[0] == {
        "prompt": "Q: 2+2? A: ",
        "completion": "4",
        "group": "math",
    }
    again = parse_probe_lines(probe.to_jsonl().splitlines(), "stored", jsonl=True)
    assert again.samples == probe.samples and again.hash == probe.hash


def read_jsonl_text(text: str) -> list[dict[str, str]]:
    """Parse JSONL text into dicts."""
    return [json.loads(line) for line in text.splitlines()]


def test_plain_text_probe_is_one_sample_per_line(tmp_path: Path) -> None:
    path = tmp_path / "probe.txt"
    path.write_text("first sample\n\n  second, indented\nthird {not json}\n")
    probe = load_probe(path)
    assert [s.text for s in probe.samples] == [
        "first sample",
        "  second, indented",
        "third {not json}",
    ]
    assert probe.groups == ["default"] and probe.source == str(path)


def test_jsonl_is_recognised_by_content_whatever_the_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "probe.txt", [{"text": "hello there", "group": "g"}])
    assert load_probe(path).samples == (ProbeSample(text="hello there", group="g"),)


def test_null_group_means_default_and_groups_keep_first_appearance_order(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"text": "a1", "group": "b"},
            {"text": "a2", "group": None},
            {"text": "a3", "group": "a"},
            {"text": "a4", "group": "b"},
        ],
    )
    assert load_probe(path).groups == ["b", "default", "a"]


def test_probe_hash_is_stable_and_content_only(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [
        {"text": "alpha beta", "group": "g1"},
        {"prompt": "Q: ", "completion": "yes", "group": "g2"},
    ]
    a = load_probe(write_jsonl(tmp_path / "a.jsonl", records))
    b = load_probe(write_jsonl(tmp_path / "b.jsonl", records))
    assert a.source != b.source
    assert a.hash == b.hash
    # Pinned: a change of the hash function would start a new run on every restart.
    assert a.hash == "7decd4459403bb13"
    reordered = load_probe(write_jsonl(tmp_path / "c.jsonl", records[::-1]))
    regrouped = load_probe(write_jsonl(tmp_path / "d.jsonl", [{**records[0], "group": "g3"}]))
    assert len({a.hash, reordered.hash, regrouped.hash}) == 3
    assert Probe(samples=a.samples, source="elsewhere").hash == a.hash


# The bundled probe -----------------------------------------------------------------------------


def test_bundled_file_has_24_samples_in_each_domain() -> None:
    records = read_jsonl(BUNDLED_FILE)
    assert len(records) == 96
    assert Counter(r["group"] for r in records) == {g: 24 for g in BUNDLED_GROUPS}
    assert all(set(r) == {"text", "group"} for r in records)
    texts = [r["text"] for r in records]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert text.isascii(), text
        assert 100 <= len(text) <= 400, text


def test_bundled_probe_loads_both_ways_and_agrees() -> None:
    from_file = load_probe(BUNDLED_FILE)
    packaged = bundled_probe()
    assert packaged.source == "bundled"
    assert packaged.groups == BUNDLED_GROUPS == from_file.groups
    assert packaged.samples == from_file.samples and packaged.hash == from_file.hash


def test_bundled_samples_tokenize_to_at_least_two_tokens() -> None:
    from grokwatch.tinymodels import CHARACTERS, build_tokenizer

    tokenizer = build_tokenizer()
    for sample in bundled_probe().samples:
        assert len(tokenizer(sample.text)["input_ids"]) >= 2, sample.text
        assert set(sample.text) <= set(CHARACTERS), sample.text


def test_bundled_probe_loads_from_a_zipped_package(tmp_path: Path) -> None:
    # A wheel or zip install has no package directory on disk: the resource must not need one.
    archive = tmp_path / "grokwatch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (REPO / "grokwatch").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(REPO).as_posix())
    code = (
        "import grokwatch, grokwatch.probe_sources as ps; "
        "assert '.zip' in grokwatch.__file__, grokwatch.__file__; "
        "p = ps.bundled_probe(); print(len(p.samples), p.hash)"
    )
    env = {**os.environ, "PYTHONPATH": str(archive)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["96", bundled_probe().hash]


# select_probe ----------------------------------------------------------------------------------


@pytest.fixture
def probe_files(tmp_path: Path) -> dict[str, Path]:
    """Three distinct probe files and an empty run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    files = {"run_dir": run_dir}
    for name in ("explicit", "config"):
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name} sample text"}])
    return files


def test_select_probe_follows_the_design_order(probe_files: dict[str, Path]) -> None:
    run_dir, explicit, config = (
        probe_files["run_dir"],
        probe_files["explicit"],
        probe_files["config"],
    )
    in_run = write_jsonl(run_dir / "grokwatch-probe.jsonl", [{"text": "run dir sample"}])
    stored = Probe(samples=(ProbeSample(text="stored sample"),), source="x").to_jsonl()

    probe, how = select_probe(explicit, config, run_dir, stored)
    assert (probe.samples[0].text, how) == ("explicit sample text", f"--probe {explicit}")
    probe, how = select_probe(None, config, run_dir, stored)
    assert probe.samples[0].text == "config sample text" and str(config) in how
    assert "config" in how
    probe, how = select_probe(None, None, run_dir, stored)
    assert probe.samples[0].text == "run dir sample"
    assert how == "grokwatch-probe.jsonl in the run directory"
    in_run.unlink()
    probe, how = select_probe(None, None, run_dir, stored)
    assert (probe.samples[0].text, how) == ("stored sample", "stored with the run")
    probe, how = select_probe(None, None, run_dir, None)
    assert (
        probe == bundled_probe() and how == BUNDLED_NOTE == "bundled probe, not your training data"
    )


def test_restart_without_probe_keeps_the_stored_probe(probe_files: dict[str, Path]) -> None:
    first, _ = select_probe(probe_files["explicit"], None, probe_files["run_dir"], None)
    again, how = select_probe(None, None, probe_files["run_dir"], first.to_jsonl())
    assert again.hash == first.hash and again.samples == first.samples
    assert how == "stored with the run"


def test_restart_of_a_bundled_run_still_says_bundled(probe_files: dict[str, Path]) -> None:
    probe, how = select_probe(None, None, probe_files["run_dir"], bundled_probe().to_jsonl())
    assert probe.hash == bundled_probe().hash and how == BUNDLED_NOTE


def test_select_probe_errors_are_not_skipped(probe_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match=r"missing\.jsonl: probe file not found"):
        select_probe(tmp_path / "missing.jsonl", None, probe_files["run_dir"], None)
    with pytest.raises(ProbeError, match=r"stored with the run is unreadable.*--probe FILE"):
        select_probe(None, None, probe_files["run_dir"], '{"text": "ok"}\n{broken\n')
    # A broken probe in the run directory is an error, not a silent fall-through to the bundle.
    (probe_files["run_dir"] / "grokwatch-probe.jsonl").write_text("{broken\n")
    with pytest.raises(ProbeError, match=r"grokwatch-probe\.jsonl:1: not valid JSON"):
        select_probe(None, None, probe_files["run_dir"], None)


# GroupReservoirs -------------------------------------------------------------------------------


def test_reservoir_picks_each_item_with_equal_probability() -> None:
    n_items, per_group, trials = 20, 5, 2000
    picks: Counter[int] = Counter()
    for seed in range(trials):
        reservoirs: GroupReservoirs[int] = GroupReservoirs(per_group, seed)
        for i in range(n_items):
            reservoirs.offer("g", i)
        kept = reservoirs.samples()["g"]
        assert kept == sorted(kept) and len(set(kept)) == per_group
        picks.update(kept)
    expected = trials * per_group / n_items  # 500; binomial sd ~ 19
    assert all(abs(picks[i] - expected) < 100 for i in range(n_items)), picks


def test_reservoir_holds_at_most_per_group_items_per_group() -> None:
    reservoirs: GroupReservoirs[int] = GroupReservoirs(per_group=7, seed=1)
    most_held = 0
    for i in range(50_000):
        reservoirs.offer(f"g{i % 3}", i)
        most_held = max(most_held, reservoirs.held)
    assert most_held == 21 and reservoirs.groups == 3 and reservoirs.seen("g0") == 16_667


# make_probe: JSONL corpora ---------------------------------------------------------------------


def test_make_probe_samples_per_group_and_writes_a_loadable_probe(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [
        {"text": f"{g} document number {i}", "group": g, "id": i}
        for i in range(40)
        for g in ("web", "code", "books")
        if not (g == "books" and i >= 3)
    ]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "probe.jsonl"
    counts = make_probe(corpus, out, per_group=10)
    assert counts == {"web": 10, "code": 10, "books": 3}
    probe = load_probe(out)
    assert probe.groups == ["web", "code", "books"]
    assert Counter(s.group for s in probe.samples) == counts
    corpus_texts = [r["text"] for r in records]
    for group in counts:
        texts = [s.text for s in probe.samples if s.group == group]
        positions = [corpus_texts.index(t) for t in texts]
        assert positions == sorted(positions), "samples keep corpus order within a group"
    # Only the probe's fields are written; the corpus's other fields stay behind.
    assert all(set(r) == {"text", "group"} for r in read_jsonl(out))


def test_make_probe_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"text": f"sample {i}", "group": f"g{i % 2}"} for i in range(500)]
    )
    outs = [tmp_path / f"out{k}.jsonl" for k in range(3)]
    make_probe(corpus, outs[0], per_group=8, seed=3)
    make_probe(corpus, outs[1], per_group=8, seed=3)
    make_probe(corpus, outs[2], per_group=8, seed=4)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert outs[0].read_bytes() != outs[2].read_bytes()


def test_make_probe_group_and_text_fields(tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "pile.jsonl",
        [
            {"content": "nested domain one", "meta": {"set": "Github"}},
            {"content": "nested domain two", "meta": {"set": "ArXiv"}},
            {"content": "no domain at all"},
            {"content": "numeric domain", "meta": {"set": 7}},
        ],
    )
    out = tmp_path / "probe.jsonl"
    counts = make_probe(corpus, out, group_field="meta.set", text_field="content")
    assert counts == {"Github": 1, "ArXiv": 1, "default": 1, "7": 1}
    assert [s.text for s in load_probe(out).samples] == [
        "nested domain one",
        "nested domain two",
        "no domain at all",
        "numeric domain",
    ]


def test_make_probe_keeps_prompt_completion_records(tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "Q: capital of France? A:", "completion": " Paris", "group": "qa"},
            {"text": "A plain document.", "group": "qa"},
        ],
    )
    out = tmp_path / "probe.jsonl"
    assert make_probe(corpus, out) == {"qa": 2}
    first, second = load_probe(out).samples
    assert first.prompt == "Q: capital of France? A:" and first.text.endswith(" Paris")
    assert second.prompt is None
    assert read_jsonl(out)[0] == {
        "prompt": "Q: capital of France? A:",
        "completion": " Paris",
        "group": "qa",
    }


def test_make_probe_skips_lines_without_text_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"text": "kept one"}, {"image": "x.png"}, {"text": ""}, {"text": "kept two"}],
    )
    with caplog.at_level(logging.WARNING, logger="grokwatch.probe_sources"):
        counts = make_probe(corpus, tmp_path / "probe.jsonl")
    assert counts == {"default": 2}
    assert "skipped 2 lines without a non-empty 'text' (first: line 2)" in caplog.text


def test_make_probe_reads_gzipped_corpora(tmp_path: Path) -> None:
    corpus = tmp_path / "shard.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as handle:
        for i in range(30):
            handle.write(json.dumps({"text": f"zipped {i}", "group": "web"}) + "\n")
    assert make_probe(corpus, tmp_path / "probe.jsonl", per_group=5) == {"web": 5}


@pytest.mark.slow
def test_make_probe_streams_a_huge_corpus_with_bounded_memory(tmp_path: Path) -> None:
    n_lines, per_group = 200_000, 16
    corpus = tmp_path / "huge.jsonl"
    groups = ("math", "code", "prose", "science")
    with corpus.open("w", encoding="utf-8") as handle:
        for i in range(n_lines):
            record = {"text": f"training sample {i:06d} " + "x" * 40, "group": groups[i % 4]}
            handle.write(json.dumps(record) + "\n")
    corpus_bytes = corpus.stat().st_size
    out = tmp_path / "probe.jsonl"
    tracemalloc.start()
    try:
        counts = make_probe(corpus, out, per_group=per_group, seed=0)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counts == {g: per_group for g in groups}
    # Holding the corpus (or its lines as Python objects) would take several times its size.
    assert peak_bytes < corpus_bytes / 10, (peak_bytes, corpus_bytes)
    positions = [int(s.text.split()[2]) for s in load_probe(out).samples]
    assert max(positions) > n_lines // 2, "a reservoir reaches past the start of the stream"
    assert sum(p < per_group * 4 for p in positions) < per_group, "not just the first lines"


# make_probe: text corpora ----------------------------------------------------------------------


def test_text_corpus_without_blank_lines_is_one_sample_per_line(tmp_path: Path) -> None:
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(f"line number {i}" for i in range(100)) + "\n\n\n")
    out = tmp_path / "probe.jsonl"
    assert make_probe(corpus, out, per_group=12) == {"default": 12}
    probe = load_probe(out)
    assert all(s.text.startswith("line number ") and "\n" not in s.text for s in probe.samples)


def test_text_corpus_with_blank_lines_is_split_into_paragraphs(tmp_path: Path) -> None:
    corpus = tmp_path / "book.txt"
    paragraphs = [f"Paragraph {i} first line.\nParagraph {i} second line." for i in range(6)]
    corpus.write_text("\n\n" + "\n\n\n".join(paragraphs) + "\n")
    out = tmp_path / "probe.jsonl"
    assert make_probe(corpus, out, per_group=10) == {"default": 6}
    assert [s.text for s in load_probe(out).samples] == paragraphs


# make_probe: errors ----------------------------------------------------------------------------


def test_make_probe_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"absent\.jsonl: corpus not found; pass an existing"):
        make_probe(tmp_path / "absent.jsonl", tmp_path / "probe.jsonl")
    with pytest.raises(UsageError, match="is a directory"):
        make_probe(tmp_path, tmp_path / "probe.jsonl")


@pytest.mark.parametrize("content", ["", "\n   \n\n"])
def test_make_probe_empty_corpus(tmp_path: Path, content: str) -> None:
    corpus = tmp_path / "empty.txt"
    corpus.write_text(content)
    with pytest.raises(ProbeError, match=r"empty\.txt: corpus is empty"):
        make_probe(corpus, tmp_path / "probe.jsonl")


def test_make_probe_without_the_text_field_names_field_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('\n{"body": "a", "id": 1}\n{"body": "b"}\n')
    with pytest.raises(ProbeError) as info:
        make_probe(corpus, tmp_path / "probe.jsonl")
    message = str(info.value)
    assert f"{corpus}:2: no line has a non-empty string field 'text'" in message
    assert "'body', 'id'" in message and "--text-field" in message
    assert "\n" not in message


def test_make_probe_bad_json_names_the_line_and_leaves_the_old_probe(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": "cut off\n')
    out = tmp_path / "probe.jsonl"
    out.write_text("previous probe\n")
    with pytest.raises(ProbeError, match=r"c\.jsonl:3: not valid JSON"):
        make_probe(corpus, out)
    assert out.read_text() == "previous probe\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "probe.jsonl"]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('["a", "list"]', r"c\.json:2: expected a JSON object"),
        ('{"text": "t", "group": "__all__"}', r"c\.json:2: group '__all__' starts with '__'"),
        ('{"text": "t", "group": ["a"]}', r"c\.json:2: field 'group' holds a list"),
    ],
)
def test_make_probe_rejects_unusable_records(tmp_path: Path, line: str, match: str) -> None:
    corpus = tmp_path / "c.json"
    corpus.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ProbeError, match=match):
        make_probe(corpus, tmp_path / "probe.jsonl")


def test_make_probe_hints_at_json_arrays(tmp_path: Path) -> None:
    corpus = tmp_path / "dump.json"
    corpus.write_text('[\n  {"text": "a"}\n]\n')
    with pytest.raises(ProbeError, match=r"dump\.json:1: .*JSON array.*jq"):
        make_probe(corpus, tmp_path / "probe.jsonl")


def test_make_probe_refuses_too_many_groups(tmp_path: Path) -> None:
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"text": "t", "id": str(i)} for i in range(MAX_GROUPS + 1)]
    )
    with pytest.raises(ProbeError, match=rf"c\.jsonl:{MAX_GROUPS + 1}: field 'id' has more than"):
        make_probe(corpus, tmp_path / "probe.jsonl", group_field="id")


def test_make_probe_names_a_non_utf8_line(tmp_path: Path) -> None:
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(b"good line\ncaf\xe9 line\n")
    with pytest.raises(ProbeError, match=r"latin1\.txt:2: not UTF-8 text"):
        make_probe(corpus, tmp_path / "probe.jsonl")


def test_make_probe_refuses_to_overwrite_the_corpus(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"sample {i}"} for i in range(10)])
    before = corpus.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(corpus)
    hard = tmp_path / "hard.jsonl"
    os.link(corpus, hard)
    for out in (corpus, tmp_path / "." / "c.jsonl", link, hard):
        with pytest.raises(UsageError, match="is the corpus itself; write the probe to another"):
            make_probe(corpus, out, per_group=2)
    assert corpus.read_bytes() == before


def test_make_probe_argument_checks_and_output_directory(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "one sample"}])
    with pytest.raises(UsageError, match="--per-group must be at least 1"):
        make_probe(corpus, tmp_path / "p.jsonl", per_group=0)
    with pytest.raises(UsageError, match="is a directory; pass a file name with -o"):
        make_probe(corpus, tmp_path)
    nested = tmp_path / "probes" / "v1" / "probe.jsonl"
    assert make_probe(corpus, nested) == {"default": 1}
    assert load_probe(nested).samples == (ProbeSample(text="one sample"),)


def test_probe_make_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from grokwatch.cli import main

    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"text": f"doc {i}", "domain": f"d{i % 2}"} for i in range(9)]
    )
    out = tmp_path / "probe.jsonl"
    args = ["probe", "make", str(corpus), "-o", str(out), "--per-group", "3"]
    result = CliRunner().invoke(main, [*args, "--group-field", "domain"])
    assert result.exit_code == 0, result.output
    assert Counter(s.group for s in load_probe(out).samples) == {"d0": 3, "d1": 3}
    result = CliRunner().invoke(main, ["probe", "make", str(tmp_path / "no.jsonl"), "-o", str(out)])
    assert result.exit_code == 2 and "corpus not found" in result.output
