import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from llmdistill import records, store
from llmdistill.prompts import load_prompts, read_prompt_file


def make_sample(i: int, T: int = 5, k: int = 3, level: int = 1, failed: bool = False) -> records.Sample:
    rng = np.random.default_rng(i)
    messages = [{"role": "user", "content": f"question {i}"}]
    gen = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "sample_index": 0}
    common = dict(
        id=records.record_id(messages, "test", "chat", "t", gen, 0),
        prompt_id=records.prompt_id(messages, "test"),
        messages=messages,
        source="test",
        teacher="t",
        gen=gen,
        level=level,
    )
    if failed:
        return records.Sample(**common, completion=None, finish_reason="error", error="timeout")
    lps = np.sort(np.log(rng.dirichlet(np.ones(k + 2), size=T))[:, :k], axis=1)[:, ::-1]
    return records.Sample(
        **common,
        completion=f"answer {i}",
        finish_reason="stop",
        usage={"prompt_tokens": 4, "completion_tokens": T},
        difficulty=1.5,
        scores={"quality": 0.5},
        metadata={"answer": "42"},
        completion_token_ids=list(range(T)),
        topk_ids=rng.integers(0, 100, size=(T, k)).astype(np.int32),
        topk_logprobs=lps.astype(np.float16),
    )


def test_round_trip_keeps_every_field_and_compact_dtypes(tmp_path):
    samples = [make_sample(0), make_sample(1, T=1), make_sample(2, failed=True), make_sample(3, T=7)]
    writer = store.ShardWriter(tmp_path)
    writer.write(samples)
    table = store.read_table(tmp_path)
    assert table.schema.field("topk_logprobs").type.value_type.value_type == "halffloat"
    assert str(table.schema.field("topk_ids").type.value_type.value_type) == "int32"
    back = list(store.iter_samples(tmp_path))
    assert [s.id for s in back] == [s.id for s in samples]
    for a, b in zip(samples, back):
        assert (a.completion, a.finish_reason, a.error, a.scores, a.metadata, a.level) == (
            b.completion, b.finish_reason, b.error, b.scores, b.metadata, b.level)
        if a.topk_ids is None:
            assert b.topk_ids is None and b.topk_logprobs is None
        else:
            np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
            np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)
            assert b.topk_logprobs.dtype == np.float16


def test_datasets_reader(tmp_path):
    store.ShardWriter(tmp_path).write([make_sample(i) for i in range(3)])
    ds = store.load_dataset(tmp_path)
    assert len(ds) == 3
    assert len(ds[0]["topk_ids"]) == 5 and len(ds[0]["topk_ids"][0]) == 3
    import datasets

    # and the plain `datasets` parquet loader reads the shards as they are
    plain = datasets.load_dataset("parquet", data_files=[str(p) for p in store.list_shards(tmp_path)],
                                  split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert plain.column_names == ds.column_names


def test_shard_numbering_continues_and_no_temporaries_remain(tmp_path):
    w = store.ShardWriter(tmp_path)
    w.write([make_sample(0)])
    w.write([make_sample(1)])
    w2 = store.ShardWriter(tmp_path)  # a resumed writer
    w2.write([make_sample(2)])
    assert [p.name for p in store.list_shards(tmp_path)] == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    w = store.ShardWriter(tmp_path)
    w.write([make_sample(0)])

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(store.StorageError, match=r"part-00001\.parquet: \[ENOSPC\] No space left on device"):
        w.write([make_sample(1)])
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.parquet"]
    assert store.read_table(tmp_path).num_rows == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_is_reported_by_name(tmp_path, damage):
    w = store.ShardWriter(tmp_path)
    w.write([make_sample(0)])
    bad = w.write([make_sample(1)])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not parquet at all" * 10)
    with pytest.raises(store.StoreError, match="part-00001.parquet"):
        store.read_table(tmp_path)
    with pytest.raises(store.StoreError, match="part-00001.parquet"):
        list(store.iter_samples(tmp_path))
    with pytest.raises(store.StoreError, match="part-00001.parquet"):
        list(store.iter_batches(tmp_path))


def test_iter_batches_reads_shard_by_shard_in_order(tmp_path):
    w = store.ShardWriter(tmp_path)
    w.write([make_sample(i) for i in range(3)])
    w.write([make_sample(i) for i in range(3, 5)])
    batches = list(store.iter_batches(tmp_path, batch_rows=2, columns=["id", "level"]))
    assert [b.num_rows for b in batches] == [2, 1, 2]  # a batch never spans two shards
    assert all(b.schema.names == ["id", "level"] for b in batches)
    assert [i for b in batches for i in b.column("id").to_pylist()] == store.read_ids(tmp_path)


@pytest.mark.parametrize("target", ["file", "shard"])
def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, target):
    def write(n):
        if target == "file":
            store.atomic_write_json(tmp_path / "stats.json", {"n": n})
            return tmp_path / "stats.json"
        return store.ShardWriter(tmp_path).write_table(records.samples_to_table([make_sample(n)]), index=0,
                                                       replace=True)

    path = write(0)
    old = path.read_bytes()

    def refused(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", refused)
    what = "shard " if target == "shard" else ""
    with pytest.raises(store.StorageError, match=rf"cannot write {what}.*{path.name}: \[ENOSPC\] No space left"):
        write(1)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_success_marker_and_manifest(tmp_path):
    assert store.read_success(tmp_path) is None
    with pytest.raises(store.StoreError, match="not a completed dataset"):
        store.require_complete(tmp_path)
    store.write_manifest(tmp_path, {"k": 3})
    store.mark_success(tmp_path, {"fingerprint": "abc"})
    assert store.read_manifest(tmp_path) == {"k": 3}
    assert store.require_complete(tmp_path)["fingerprint"] == "abc"
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(store.StoreError, match="corrupt JSON"):
        store.read_manifest(tmp_path)


def test_removed_rows_carry_their_reason(tmp_path):
    w = store.ShardWriter(tmp_path, records.removed_schema())
    w.write([make_sample(0), make_sample(1)], ["duplicate", "too_short"])
    assert store.read_table(tmp_path).column("reason").to_pylist() == ["duplicate", "too_short"]


def test_json_columns_have_one_encoding():
    s = make_sample(0)
    s.scores, s.metadata = {"z": 1.0, "é": 0.5}, {"b": "naïve", "a": [1]}
    table = records.samples_to_table([s])
    assert table.column("scores").to_pylist() == ['{"z": 1.0, "\\u00e9": 0.5}']  # sorted keys, ASCII
    assert table.column("metadata").to_pylist() == ['{"a": [1], "b": "naïve"}']  # sorted keys, text as it is
    assert [records.encode_json_column(v, c) for v, c in ((s.scores, "scores"), (s.metadata, "metadata"))] == [
        json.dumps(s.scores, sort_keys=True), json.dumps(s.metadata, sort_keys=True, ensure_ascii=False)]
    assert records.decode_json_column(None) == records.decode_json_column("") == {}
    back, = records.table_to_samples(table)
    assert (back.scores, back.metadata) == (s.scores, s.metadata)


def test_samples_from_a_table_without_the_teacher_signal(tmp_path):
    samples = [make_sample(0), make_sample(1, failed=True)]
    store.ShardWriter(tmp_path).write(samples)
    light = [c for c in records.arrow_schema().names if c not in store.SPLIT_COLUMNS]
    back = records.table_to_samples(store.read_table(tmp_path, light))
    for a, b in zip(samples, back):
        assert (b.completion_token_ids, b.topk_ids, b.topk_logprobs) == (None, None, None)
        assert (a.id, a.completion, a.error, a.scores, a.metadata, a.usage, a.level) == (
            b.id, b.completion, b.error, b.scores, b.metadata, b.usage, b.level)


def test_record_id_depends_on_every_input():
    m = [{"role": "user", "content": "hi"}]
    gen = {"temperature": 0.7}
    base = records.record_id(m, "s", "chat", "t", gen, 0)
    assert base == records.record_id(m, "s", "chat", "t", dict(gen), 0)
    variants = [
        records.record_id([{"role": "user", "content": "hi!"}], "s", "chat", "t", gen, 0),
        records.record_id(m, "s2", "chat", "t", gen, 0),
        records.record_id(m, "s", "other", "t", gen, 0),
        records.record_id(m, "s", "chat", "t2", gen, 0),
        records.record_id(m, "s", "chat", "t", {"temperature": 0.8}, 0),
        records.record_id(m, "s", "chat", "t", gen, 1),
    ]
    assert len({base, *variants}) == 7


def test_sample_rejects_misaligned_topk():
    with pytest.raises(ValueError, match="one to one"):
        records.Sample(id="x", prompt_id="p", messages=[], completion="a", source="s", teacher="t", gen={},
                       finish_reason="stop", completion_token_ids=[1, 2],
                       topk_ids=np.zeros((3, 2)), topk_logprobs=np.zeros((3, 2)))


# ------------------------------------------------------------------------------------------ prompts
def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_prompt_file_errors_name_file_and_line(tmp_path):
    p = write_lines(tmp_path / "p.jsonl", ['{"prompt": "ok", "level": 1}', "{broken", '{"prompt": "x"}'])
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
        read_prompt_file(p)
    p = write_lines(tmp_path / "q.jsonl", ['{"prompt": "ok", "level": "hard"}'])
    with pytest.raises(ValueError, match=r"q\.jsonl:1: 'level' must be"):
        read_prompt_file(p)
    p = write_lines(tmp_path / "r.jsonl", ['{"text": "no prompt key"}'])
    with pytest.raises(ValueError, match=r"r\.jsonl:1: needs a non-empty 'prompt'"):
        read_prompt_file(p)


# Real text with a byte that is not UTF-8 on line 3 (a Latin-1 "é" pasted into a UTF-8 file), and
# characters that are fine: a no-break space, curly quotes, a line separator inside a JSON string.
NOT_UTF8 = ('{"prompt": "caf\u00e9 \u2019quoted\u2019", "level": 1}\n'.encode()
            + '{"prompt": "no\u00a0break\u2028space", "level": 1}\n'.encode()
            + b'{"prompt": "caf\xe9 au lait", "level": 2}\n'
            + b'{"prompt": "last", "level": 3}\n')


def test_prompt_file_with_a_byte_that_is_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(NOT_UTF8)
    with pytest.raises(ValueError, match=r"^.*mixed\.jsonl:3: not UTF-8 text \(byte 0xe9 at character 16\)$"):
        read_prompt_file(p)
    with pytest.raises(ValueError, match=r"mixed\.jsonl:3: not UTF-8 text"):
        load_prompts([p])  # eval's reader
    bad: list[str] = []
    prompts = read_prompt_file(p, bad_lines=bad)  # skip mode: the other lines are read
    assert [q.messages[-1]["content"] for q in prompts] == ["caf\u00e9 \u2019quoted\u2019", "no\u00a0break\u2028space",
                                                           "last"]
    assert bad == [f"{p}:3: not UTF-8 text (byte 0xe9 at character 16)"]
    t = tmp_path / "plain.txt"  # text format too
    t.write_bytes(b"one\r\ntw\xff\xfeo\r\nthree\n")
    with pytest.raises(ValueError, match=r"plain\.txt:2: not UTF-8 text \(byte 0xff at character 3\)"):
        read_prompt_file(t)


def test_curriculum_order_dedup_and_even_subsample(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "level": lv}) for i, lv in enumerate([3, 1, 2, 1, 3, 2, 1, 2, 3])]
    lines.append(json.dumps({"prompt": "q0", "level": 3}))  # an exact repeat is dropped
    p = write_lines(tmp_path / "p.jsonl", lines)
    prompts = load_prompts([p], system_prompt="be brief")
    assert [x.level for x in prompts] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert prompts[0].messages[0] == {"role": "system", "content": "be brief"}
    few = load_prompts([p], max_prompts=3)
    assert [x.level for x in few] == [1, 2, 3]
    assert [x.level for x in load_prompts([p], order="file")][:3] == [3, 1, 2]


# ---- file modes follow the umask (issue 11, item 14)
UMASK_CHILD = """
import os, stat, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from llmdistill import records, store
from llmdistill.prompts import load_prompts, read_prompt_file
sys.path.insert(0, sys.argv[3])
from test_records_store import make_sample
d = Path(sys.argv[1])
store.atomic_write_json(d / "a" / "stats.json", {"x": 1})
store.atomic_write_bytes(d / "a" / "stats.json", b"again")  # a replaced file too
shard = store.ShardWriter(d / "a").write([make_sample(0)])
with open(d / "plain.txt", "w") as f:  # what any other writer of this process gets
    f.write("x")
for p in (d / "a" / "stats.json", shard, d / "plain.txt"):
    print(oct(stat.S_IMODE(p.stat().st_mode)))
"""


@pytest.mark.parametrize("umask, mode", [("022", "0o644"), ("027", "0o640"), ("077", "0o600")])
def test_atomic_files_and_shards_get_the_umask_mode(tmp_path, umask, mode):
    """A fresh process (the umask is read once per process), as a user's shell would start it."""
    import subprocess
    import sys
    from pathlib import Path

    res = subprocess.run([sys.executable, "-c", UMASK_CHILD, str(tmp_path), umask, str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [mode, mode, mode]


def test_apply_file_mode_opens_up_safetensors_weights(tmp_path):
    """safetensors writes weights 0600 whatever the umask; apply_file_mode is the fix for such writers."""
    import stat

    import torch
    from safetensors.torch import save_file

    (tmp_path / "student").mkdir()
    weights = tmp_path / "student" / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))  # 0600 with safetensors 0.8, whatever the umask
    weights.chmod(0o600)
    store.apply_file_mode(tmp_path)
    assert stat.S_IMODE(weights.stat().st_mode) == store.file_mode()


def test_umask_is_read_without_changing_it(monkeypatch):
    import os

    monkeypatch.setattr(store, "_umask", None)
    before = os.umask(0o027)
    try:
        assert store.process_umask() == 0o027 and store.file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # still what it was
        monkeypatch.setattr(store, "_umask", None)
        real_open = open

        def no_proc(path, *args, **kwargs):  # a system without /proc: read by setting it, once
            if str(path) == "/proc/self/status":
                raise FileNotFoundError(path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", no_proc)
        assert store.process_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)
