"""Shards named by the caller (generate names them by plan position): numeric order, no overwrite."""

import pytest

from llmdistill import records, store


def sample(i):
    return records.Sample(id=f"id{i}", prompt_id="p", messages=[{"role": "user", "content": "q"}], completion="a",
                          source="s", teacher="default", gen={}, finish_reason="stop")


def test_named_shards_list_in_numeric_order_and_never_overwrite(tmp_path):
    writer = store.ShardWriter(tmp_path)
    for index in (120000, 7, 30):  # written out of order, widths differ
        writer.write([sample(index)], index=index)
    assert [p.name for p in store.list_shards(tmp_path)] == [
        "part-00007.parquet", "part-00030.parquet", "part-120000.parquet"]
    assert store.read_ids(tmp_path) == ["id7", "id30", "id120000"]
    with pytest.raises(store.StoreError, match="already exists"):
        writer.write([sample(1)], index=30)
