"""Shards store the teacher signal byte-stream-split (smaller), and read back exactly what was written."""

import numpy as np
import pyarrow.parquet as pq

from llmdistill import records, store


def sample(i: int, t: int, k: int, rng) -> records.Sample:
    ids = rng.integers(0, 49_152, size=(t, k), dtype=np.int32)
    lps = np.sort(rng.normal(-6, 3, size=(t, k)), axis=1)[:, ::-1].astype(np.float16)
    if t:
        lps[0, -1] = -np.inf  # a vocabulary smaller than k pads with -inf
    return records.Sample(id=f"s{i}", prompt_id="p", messages=[{"role": "user", "content": "hi"}], completion="x",
                          source="t", teacher="m", gen={}, finish_reason="stop",
                          completion_token_ids=ids[:, 0].tolist(), topk_ids=ids, topk_logprobs=lps)


def test_signal_columns_are_byte_stream_split_and_lossless(tmp_path):
    rng = np.random.default_rng(0)
    samples = [sample(i, t, 20, rng) for i, t in enumerate((5, 0, 17))]
    path = store.ShardWriter(tmp_path).write(samples)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for column in ("completion_token_ids.list.element", "topk_ids.list.element.list.element",
                   "topk_logprobs.list.element.list.element"):
        assert "BYTE_STREAM_SPLIT" in encodings[column]
    assert "RLE_DICTIONARY" in encodings["messages.list.element.content"]  # the rest keeps dictionaries
    back = list(store.iter_samples(tmp_path))
    for a, b in zip(samples, back):
        assert a.completion_token_ids == b.completion_token_ids
        if a.topk_ids.size == 0:  # an empty completion reads back as an empty matrix
            assert b.topk_ids.size == 0 and b.topk_logprobs.size == 0
            continue
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)  # bit for bit, -inf included
    ds = store.load_dataset(tmp_path)  # and `datasets` reads it
    assert ds[2]["topk_ids"] == samples[2].topk_ids.tolist()
