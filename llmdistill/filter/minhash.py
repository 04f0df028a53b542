"""Near-duplicate detection: word shingles hashed in numpy, R-MinHash signatures from rensa, LSH banding,
candidates verified by exact Jaccard, then a greedy choice of the rows to keep (`greedy_removals`).

Everything works on chunks of texts so memory stays bounded: a corpus pass keeps only `bands` 64-bit
band keys per document (128 bytes at 16 bands); the exact check re-reads the few documents that are
candidates. Hashing is native: a chunk's texts are normalised (`textnorm.word_text`: NFKC, case-folded,
quotes and dashes folded, every character that is not a letter, number or mark made a space), encoded
and joined into one byte array, word boundaries and per-word polynomial hashes come from vectorised
prefix sums (uint64 arithmetic wraps modulo 2^64), and n-word shingles are mixed from consecutive word
hashes. Hashes are stable across processes and machines, so signatures can be stored (see `history.py`).

rensa's full-set R-MinHash is used, never its position-sensitive "rho" mode (one edited word hides a
duplicate there).
"""

from __future__ import annotations

import array
from collections.abc import Callable, Iterable

import numpy as np

from llmdistill import textnorm

_P = np.uint64(0x100000001B3)  # odd: invertible modulo 2^64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_K = np.uint64(0x9E3779B97F4A7C15)

# bytes that belong to a word: ASCII letters (the text is case-folded first) and digits, and every byte of a
# multi-byte UTF-8 character (`textnorm.word_text` has already made every non-ASCII non-word character a space);
# a `bytes.translate` table: 1 for a word byte, 0 otherwise (read back as a bool array)
_WORD_BYTES = bytes(int(c in b"abcdefghijklmnopqrstuvwxyz0123456789" or c >= 0x80) for c in range(256))
_MAX = np.uint64(2**64 - 1)

_powers = np.ones(1, dtype=np.uint64)
_inv_powers = np.ones(1, dtype=np.uint64)


def _geometric(base: int, size: int) -> np.ndarray:
    """[size] uint64: base^i modulo 2^64, filled by doubling (each step one vector multiply, not a cumprod)."""
    out = np.empty(size, np.uint64)
    out[0] = 1
    filled = 1
    with np.errstate(over="ignore"):
        while filled < size:
            k = min(filled, size - filled)
            np.multiply(out[:k], np.uint64(pow(base, filled, 2**64)), out=out[filled: filled + k])
            filled += k
    return out


def _pow_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _powers, _inv_powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers))
        _powers, _inv_powers = _geometric(int(_P), size), _geometric(int(_P_INV), size)
    return _powers[:n], _inv_powers[:n]


def _mix64_inplace(x: np.ndarray) -> np.ndarray:
    """`mix64` overwriting `x` (uint64), with one temporary instead of one per operation."""
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        np.right_shift(x, np.uint64(30), out=t)
        x ^= t
        x *= np.uint64(0xBF58476D1CE4E5B9)
        np.right_shift(x, np.uint64(27), out=t)
        x ^= t
        x *= np.uint64(0x94D049BB133111EB)
        np.right_shift(x, np.uint64(31), out=t)
        x ^= t
    return x


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: spreads every input bit over the output."""
    return _mix64_inplace(np.array(x, dtype=np.uint64))


_BATCH_BYTES = 1 << 18  # texts are hashed in batches of about this many bytes: the uint64 work arrays
# (8 bytes per byte of text, and the power tables) stay small and in cache whatever the chunk size


def _word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, counts): the hash of every word of every text, flat and in order, and each text's word count."""
    if not texts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    encoded = [textnorm.word_text(t).encode("utf-8") for t in texts]
    ends = np.cumsum([len(e) + 1 for e in encoded])
    cuts = np.searchsorted(ends, np.arange(_BATCH_BYTES, int(ends[-1]), _BATCH_BYTES), side="right")
    bounds = [0, *np.unique(cuts[(cuts > 0) & (cuts < len(encoded))]).tolist(), len(encoded)]
    parts = [_hash_words(encoded[a:b]) for a, b in zip(bounds, bounds[1:])]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([h for h, _ in parts]), np.concatenate([c for _, c in parts])


def _hash_words(encoded: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """`_word_hashes` of one batch of normalised, encoded texts."""
    # a NUL before, between and after the texts: no word touches the ends or crosses two texts
    joined = b"\x00" + b"\x00".join(encoded) + b"\x00"
    data = np.frombuffer(joined, dtype=np.uint8)
    is_word = np.frombuffer(joined.translate(_WORD_BYTES), dtype=bool)
    # the ends are NULs, so the edges alternate: a word's start, its end, the next start, ...
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    n = len(data)
    pw, inv = _pow_tables(n)
    with np.errstate(over="ignore"):
        prefix = data.astype(np.uint64)
        prefix *= pw
        np.cumsum(prefix, out=prefix)  # prefix[i] = sum of byte_k * P^k for k <= i
        h = prefix[ends - 1]
        h -= prefix[starts - 1]  # starts >= 1: data[0] is a NUL
        h *= inv[starts]  # sum_i byte_i * P^(i - start) over the word, position-free
        length = (ends - starts).astype(np.uint64)
        length *= _K
        h ^= length
    _mix64_inplace(h)
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    bounds = np.concatenate([[0], np.cumsum(lengths + 1)])  # text i's bytes lie in (bounds[i], bounds[i + 1])
    return h, np.diff(np.searchsorted(starts, bounds))


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, doc) of every word of every text, in order: a uint64 hash per word and the text it is in.

    A word is a maximal run of letters, numbers and combining marks of the normalised text (`textnorm`);
    spaces, punctuation (Unicode's as well as ASCII's, '_' included), symbols and controls separate words.
    """
    h, counts = _word_hashes(texts)
    return h, np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def shingle_hashes(texts: list[str], n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): the n-word shingle hashes of every text, flat, text i at hashes[offsets[i]:offsets[i+1]].

    A text with fewer than n words has no shingles (it can only be an exact duplicate).
    """
    h, counts = _word_hashes(texts)
    per_text = np.maximum(counts - (n - 1), 0)
    if per_text.sum():
        m = len(h) - n + 1
        sh = h[:m].copy()
        with np.errstate(over="ignore"):
            for j in range(1, n):
                sh *= _K
                sh += h[j: j + m]
                _mix64_inplace(sh)
        if n > 1:  # drop the shingles that run from one text into the next
            doc = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            sh = sh[doc[:m] == doc[n - 1:]]
    else:
        sh = np.zeros(0, np.uint64)
    offsets = np.concatenate([[0], np.cumsum(per_text)]).astype(np.uint64)
    return sh, offsets


def _width_blocks(lengths: np.ndarray, cells: int = 1 << 20):
    """(rows, width): the rows whose length fits one power-of-two width (16 or more), at most `cells` cells
    (rows x width) at a time: rows of similar length sorted together as one padded matrix."""
    width = np.maximum(16, 2 ** np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64))
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        step = max(1, cells // w)
        for i in range(0, len(rows), step):
            yield rows[i: i + step], w


def _unique_rows(sh: np.ndarray, off: np.ndarray) -> list[np.ndarray]:
    """np.unique of every segment sh[off[i]:off[i+1]], without a Python-level call per segment: segments of
    similar length are padded (with the largest uint64) into one matrix and sorted row-wise; the padding
    sorts last, so a row's first `length` values are its own, sorted."""
    lengths = np.diff(off)
    out: list[np.ndarray] = [np.zeros(0, np.uint64)] * len(lengths)
    for rows, w in _width_blocks(lengths):
        real = np.arange(w) < lengths[rows][:, None]
        mat = np.full((len(rows), w), _MAX, np.uint64)
        mat[real] = sh[(off[rows][:, None] + np.arange(w))[real]]
        mat.sort(axis=1)
        real[:, 1:] &= mat[:, 1:] != mat[:, :-1]
        flat, ends = mat[real], np.cumsum(real.sum(1)).tolist()
        for r, a, b in zip(rows.tolist(), [0, *ends], ends):
            out[r] = flat[a:b]
    return out


def _pair_jaccards(pairs: np.ndarray, sets: dict[int, np.ndarray]) -> np.ndarray:
    """`jaccard(sets[a], sets[b])` for every pair, the same floats, without a call per pair: a pair's two sorted
    unique sets are concatenated into a padded row (rows of similar length in one matrix), the rows sorted,
    and the intersection is the number of values equal to their left neighbour within the row's length."""
    docs = np.unique(pairs)
    arrays = [sets[d] for d in docs.tolist()]
    size = np.fromiter((len(x) for x in arrays), np.int64, count=len(arrays))
    flat = np.concatenate(arrays).astype(np.uint64, copy=False)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    ia, ib = np.searchsorted(docs, pairs[:, 0]), np.searchsorted(docs, pairs[:, 1])
    la, total = size[ia], size[ia] + size[ib]
    inter = np.zeros(len(pairs), np.int64)
    for rows, w in _width_blocks(total):
        col = np.arange(w)
        n_a, n = la[rows][:, None], total[rows][:, None]
        in_a = col < n_a
        in_b = ~in_a & (col < n)
        mat = np.full((len(rows), w), _MAX, np.uint64)
        mat[in_a] = flat[(start[ia[rows]][:, None] + col)[in_a]]
        mat[in_b] = flat[(start[ib[rows]][:, None] + col - n_a)[in_b]]
        mat.sort(axis=1)
        inter[rows] = ((mat[:, 1:] == mat[:, :-1]) & (col[1:] < n)).sum(1)
    union = total - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def shingle_sets(texts: list[str], n: int = 3) -> list[np.ndarray]:
    """Sorted unique shingle hashes per text (for exact Jaccard)."""
    sh, off = shingle_hashes(texts, n)
    return _unique_rows(sh, off.astype(np.int64))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays (0 when both are empty)."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def signatures(texts: list[str], n: int = 3, num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(signatures [len, num_perm] uint32, has_shingles [len] bool): full-set R-MinHash of the shingle sets."""
    import rensa

    sh, off = shingle_hashes(texts, n)
    if not texts:
        return np.zeros((0, num_perm), np.uint32), np.zeros(0, bool)
    mat = rensa.RMinHash.digest_matrix_from_flat_token_hashes(sh, off, num_perm, seed)
    # rensa hands the matrix out as lists of ints only; array.array reads them faster than numpy does
    flat = array.array("I")
    for row in mat.to_rows():
        flat.extend(row)
    sig = np.frombuffer(flat, dtype=np.uint32).reshape(len(texts), num_perm)
    return sig, np.diff(off.astype(np.int64)) > 0


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """[len, bands] uint64: one hash per band of `rows = num_perm // bands` consecutive signature values."""
    n, p = sig.shape
    rows = p // bands
    s = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    key = np.zeros((n, bands), np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            key *= _K
            key += s[:, :, r]
            key += np.uint64(r + 1)
            _mix64_inplace(key)
    return key


def collision_probability(j: float, bands: int, rows: int) -> float:
    """P(two documents of Jaccard j share at least one band) = 1 - (1 - j^rows)^bands."""
    return 1.0 - (1.0 - j**rows) ** bands


def optimal_bands(threshold: float, num_perm: int, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted area of false positives below
    `threshold` and false negatives above it. Candidates are verified by exact Jaccard, so a false positive
    only costs a check: the default weighs misses 19 to 1."""
    xs_lo = np.linspace(0.0, threshold, 200)
    xs_hi = np.linspace(threshold, 1.0, 200)
    best, best_cost = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - xs_lo**r) ** b, xs_lo)
            fn = np.trapezoid((1 - xs_hi**r) ** b, xs_hi)
            cost = (1 - fn_weight) * fp + fn_weight * fn
            if cost < best_cost:
                best, best_cost = (b, r), cost
    return best


def candidate_pairs(keys: np.ndarray, valid: np.ndarray | None = None, max_bucket: int = 1000,
                    order: np.ndarray | None = None) -> np.ndarray:
    """[M, 2] int64 pairs (i < j) of documents that share a band key, without repeats.

    In a bucket of m documents, taken in `order` (a permutation, best first; default: index order), each
    is paired with the bucket's first and with its predecessor (2m pairs, not m^2): the first is the one
    the greedy selection keeps. Buckets larger than `max_bucket` (boilerplate repeated thousands of times)
    are cut into slices of that size.
    """
    ids, bucket = shared_buckets(keys, valid, order)
    return bucket_pairs(ids, bucket, keys.shape[0], max_bucket=max_bucket)


def shared_buckets(keys: np.ndarray, valid: np.ndarray | None = None,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, bucket): the documents of every band's buckets of two or more, flat; a bucket's members are
    consecutive, in `order` (default: index order), and share a `bucket` number (increasing)."""
    n = keys.shape[0]
    idx_all = np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    if valid is not None:
        idx_all = idx_all[valid[idx_all]]
    out_ids, out_bucket, base = [], [], 0
    for b in range(keys.shape[1]):
        k = keys[idx_all, b]
        by_key = np.argsort(k, kind="stable")  # equal keys stay in `order`
        ks, ids = k[by_key], idx_all[by_key]
        same = ks[1:] == ks[:-1]
        if not same.any():
            continue
        shared = np.zeros(len(ks), bool)
        shared[1:] |= same
        shared[:-1] |= same
        run = np.cumsum(np.concatenate([[True], ~same]))
        out_ids.append(ids[shared])
        out_bucket.append(run[shared] + base)
        base += int(run[-1]) + 1
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_ids), np.concatenate(out_bucket)


def bucket_pairs(ids: np.ndarray, bucket: np.ndarray, n: int, alive: np.ndarray | None = None,
                 max_bucket: int = 1000) -> np.ndarray:
    """The candidate pairs of `shared_buckets` (first and predecessor in each bucket) among the `alive` ones."""
    if alive is not None:
        keep = alive[ids]
        ids, bucket = ids[keep], bucket[keep]
    same = bucket[1:] == bucket[:-1]
    if not same.any():
        return np.zeros((0, 2), np.int64)
    # position of each element inside its run of equal buckets
    run_start = np.concatenate([[True], ~same])
    first_pos = np.maximum.accumulate(np.where(run_start, np.arange(len(ids)), 0))
    pos_in_run = np.arange(len(ids)) - first_pos
    slice_start = first_pos + (pos_in_run // max_bucket) * max_bucket
    member = np.flatnonzero(pos_in_run % max_bucket > 0)
    pred = np.flatnonzero(same) + 1
    pred = pred[pos_in_run[pred] % max_bucket > 1]
    pairs = np.concatenate([np.stack([ids[slice_start[member]], ids[member]], 1),
                            np.stack([ids[pred - 1], ids[pred]], 1)])
    pairs = np.sort(pairs, axis=1)
    code = np.unique(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    return np.stack([code // n, code % n], 1)


def greedy_removals(order: np.ndarray, pairs: np.ndarray) -> dict[int, int]:
    """{removed node: the kept node it duplicates} for nodes visited in `order` (best first) over [M, 2] pairs.

    A node is kept unless a pair joins it to a node already kept, so every removed node has a pair with a
    kept one and no pair joins two kept nodes. Clusters do not chain: in a chain a-b-c (pairs a-b and b-c
    only, a first) b goes and a and c both stay. A removed node names its best-placed kept partner.
    """
    if len(pairs) == 0:
        return {}
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    a, b = pairs[:, 0], pairs[:, 1]
    first = np.where(rank[a] < rank[b], a, b)  # the partner visited earlier
    later = np.where(rank[a] < rank[b], b, a)
    # visit pairs by the later node's rank, then the earlier partner's: when a pair comes up, the earlier
    # partner's fate is settled (all its own pairs with earlier nodes came before)
    by = np.lexsort((rank[first], rank[later]))
    first, later = first[by], later[by]
    # settled without the loop: a node whose best-placed partner is never the later node of a pair (so is
    # kept) goes, with that partner; the loop visits the other nodes' pairs only, in the same order
    head = np.ones(len(later), bool)
    head[1:] = later[1:] != later[:-1]
    is_later = np.zeros(len(order), bool)
    is_later[later] = True
    easy = head & ~is_later[first]
    removed: dict[int, int] = dict(zip(later[easy].tolist(), first[easy].tolist()))
    settled = np.zeros(len(order), bool)
    settled[later[easy]] = True
    rest = ~settled[later]
    if not rest.any():
        return removed  # already in the order of the nodes' ranks
    for f, node in zip(first[rest].tolist(), later[rest].tolist()):
        if node not in removed and f not in removed:
            removed[node] = f
    # in the order of the nodes' ranks, as visiting every pair in turn would have inserted them
    nodes = np.fromiter(removed.keys(), np.int64, count=len(removed))
    partners = np.fromiter(removed.values(), np.int64, count=len(removed))
    o = np.argsort(rank[nodes], kind="stable")
    return dict(zip(nodes[o].tolist(), partners[o].tolist()))


def verify_pairs(pairs: np.ndarray, read: Callable, ngram: int, threshold: float,
                 sets: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, jaccards) of the candidate pairs whose exact shingle Jaccard is >= threshold.

    `read(docs)` gets the sorted indices of the candidate documents and yields (indices, texts) chunks
    that cover them; only those documents' shingle sets are held (in `sets`, when given, which keeps them
    for the next call: documents already there are not read again).
    """
    if len(pairs) == 0:
        return pairs, np.zeros(0)
    sets = {} if sets is None else sets
    docs = np.unique(pairs)
    missing = docs[[d not in sets for d in docs.tolist()]] if sets else docs
    if len(missing):
        for idx, texts in read(missing):
            for d, s in zip(np.asarray(idx).tolist(), shingle_sets(texts, ngram)):
                sets[d] = s
    js = _pair_jaccards(pairs, sets)
    keep = js >= threshold
    return pairs[keep], js[keep]


class NearDuplicateFinder:
    """Streaming near-duplicate search over a corpus seen once in chunks, then verified.

        finder = NearDuplicateFinder(threshold=0.8)
        for chunk in corpus_chunks: finder.add(chunk)           # pass 1: signatures -> band keys
        removed, pairs, n_candidates = finder.removals(read)    # pass 2: exact Jaccard of candidates
        # removed: {row: the kept row it has Jaccard >= threshold with}
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, bands: int | None = None, ngram: int = 3,
                 seed: int = 1, keep_signatures: bool = False):
        self.threshold, self.num_perm, self.ngram, self.seed = threshold, num_perm, ngram, seed
        self.bands = bands or optimal_bands(threshold, num_perm)[0]
        self.keep_signatures = keep_signatures
        self._keys: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        self._sigs: list[np.ndarray] = []
        self.count = 0

    def add(self, texts: list[str]) -> np.ndarray:
        """Add a chunk of texts (indices continue from earlier chunks); returns their signatures."""
        sig, valid = signatures(texts, self.ngram, self.num_perm, self.seed)
        self._keys.append(band_keys(sig, self.bands))
        self._valid.append(valid)
        if self.keep_signatures:
            self._sigs.append(sig)
        self.count += len(texts)
        return sig

    def add_keys(self, keys: np.ndarray, valid: np.ndarray) -> None:
        """Add band keys computed elsewhere (`band_keys` of `signatures`, e.g. per part on other machines)."""
        self._keys.append(keys)
        self._valid.append(valid)
        self.count += len(keys)

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, self.bands), np.uint64)
        valid = np.concatenate(self._valid) if self._valid else np.zeros(0, bool)
        self._keys, self._valid = [keys], [valid]
        return keys, valid

    def candidates(self, alive: np.ndarray | None = None, order: np.ndarray | None = None) -> np.ndarray:
        """Candidate pairs among the documents with shingles (and `alive`), buckets taken in `order`."""
        keys, valid = self._stacked()
        return candidate_pairs(keys, valid if alive is None else valid & alive, order=order)

    def signatures(self) -> np.ndarray:
        return np.concatenate(self._sigs) if self._sigs else np.zeros((0, self.num_perm), np.uint32)

    def verified_pairs(self, read: Callable) -> tuple[np.ndarray, np.ndarray]:
        return verify_pairs(self.candidates(), read, self.ngram, self.threshold)

    def removals(self, read: Callable, order: np.ndarray | None = None) -> tuple[dict[int, int], np.ndarray, int]:
        """({removed: kept partner}, verified pairs, candidate pairs checked): `greedy_removals` in `order`
        (best first; default: index order) over the verified candidates.

        A bucket pairs each member with its best-placed one and its predecessor only, so once a round has
        removed rows, survivors that were not paired may now be: candidates are drawn again among the
        survivors and only the new ones verified, until a round brings no new verified pair (usually the
        second). Shingle sets read in one round are kept for the next, so `read` is called again only for
        documents not yet read (none in practice: a survivor paired anew shared a bucket before, so it was
        already a candidate).
        """
        n = self.count
        order = np.arange(n) if order is None else np.asarray(order, np.int64)
        keys, valid = self._stacked()
        ids, bucket = shared_buckets(keys, valid, order)  # the buckets are drawn once; rounds filter them
        checked = np.zeros(0, np.int64)  # pair codes i * n + j already verified
        sets: dict[int, np.ndarray] = {}  # shingle sets read so far
        verified: list[np.ndarray] = []
        removed: dict[int, int] = {}
        alive = None
        while True:
            cand = bucket_pairs(ids, bucket, n, alive)
            code = cand[:, 0] * np.int64(n) + cand[:, 1]  # sorted and unique, as `checked` is
            at = np.minimum(np.searchsorted(checked, code), max(len(checked) - 1, 0))
            new = checked[at] != code if len(checked) else np.ones(len(code), bool)
            if not new.any():
                break
            # two sorted runs without a common value: a stable sort (timsort) merges them in linear time
            checked = np.sort(np.concatenate([checked, code[new]]), kind="stable")
            pairs, _ = verify_pairs(cand[new], read, self.ngram, self.threshold, sets)
            if len(pairs) == 0:
                break
            verified.append(pairs)
            removed = greedy_removals(order, np.concatenate(verified))
            alive = np.ones(n, bool)
            alive[list(removed)] = False
        pairs = np.concatenate(verified) if verified else np.zeros((0, 2), np.int64)
        return removed, pairs, len(checked)


def reader(texts: list[str], chunk: int = 4096) -> Callable:
    """A `read` for `verify_pairs` over an in-memory list of texts."""

    def read(docs: np.ndarray) -> Iterable[tuple[np.ndarray, list[str]]]:
        for i in range(0, len(docs), chunk):
            part = docs[i: i + chunk]
            yield part, [texts[j] for j in part]

    return read
