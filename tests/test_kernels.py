"""knowledge.kernels: the CPU path against a brute-force reference, bad input, the GPU twin, CUDA sources."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from knowledge.kernels import (
    MAX_K,
    METRICS,
    DTypeError,
    GpuUnavailableError,
    InvalidDeviceError,
    InvalidKError,
    KernelInputError,
    MaskError,
    NonFiniteInputError,
    ShapeError,
    UnknownMetricError,
    gpu_available,
    topk,
)
from knowledge.kernels import cpu as kcpu
from knowledge.kernels import gpu as kgpu
from knowledge.kernels import keys as kkeys
from knowledge.kernels.validate import host_queries, prepare_queries

GPU_OK, GPU_REASON = gpu_available()
requires_gpu = pytest.mark.skipif(not GPU_OK, reason=f"no usable GPU for the CuPy path: {GPU_REASON}")
NVCC = shutil.which("nvcc")

F32 = np.float32


# ------------------------------------------------------------------------------------------------
# Reference: float64 dot products, the documented float32 score formula, then a full sort.


def _ref_scores(queries, base, metric):
    """All scores [nq, n] per the documented formula (exact whenever the dot products are exact)."""
    base = np.asarray(base)
    prepared = prepare_queries(host_queries(queries, base.shape[1]), metric, base.dtype)
    q64, b64 = prepared.vectors.astype(np.float64), base.astype(np.float64)
    dots = (q64 @ b64.T).astype(F32)
    bn2 = (b64 * b64).sum(axis=1).astype(F32)
    with np.errstate(all="ignore"):
        if metric == "ip":
            scores = dots
        elif metric == "cosine":
            norm = np.sqrt(bn2)
            scores = np.where(norm == 0, F32(0), dots / np.where(norm == 0, F32(1), norm))
        else:
            qn2 = (prepared.vectors.astype(np.float64) ** 2).sum(axis=1).astype(F32)
            scores = (qn2[:, None] + bn2[None, :]) - F32(2) * dots
            scores = np.where(scores < 0, F32(0), scores)
    return (scores + F32(0)).astype(F32)


def reference(queries, base, k, metric, mask=None):
    """Brute-force top-k by full sort: (score best first, then lower id), NaN and masked rows dropped."""
    all_scores = _ref_scores(queries, base, metric)
    nq, n = all_scores.shape
    pad = -np.inf if metric != "l2" else np.inf
    scores = np.full((nq, k), pad, dtype=F32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    row_ids = np.arange(n)
    eligible = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    for i in range(nq):
        s = all_scores[i]
        ok = eligible & ~np.isnan(s)
        cand_ids, cand_scores = row_ids[ok], s[ok]
        primary = -cand_scores.astype(np.float64) if metric != "l2" else cand_scores.astype(np.float64)
        order = np.lexsort((cand_ids, primary))[:k]
        scores[i, : order.size] = cand_scores[order]
        ids[i, : order.size] = cand_ids[order]
    return scores, ids, all_scores


def exact_data(seed, n=600, d=24, nq=5, dtype=F32):
    """Small-integer rows (with duplicates and zero rows) and {-1,0,1} queries with 4 non-zeros.

    Every product and sum is exact in float32 and a cosine query normalises to exactly +-0.5, so any
    summation order gives bit-identical scores; there are many exact ties to exercise tie-breaking.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(-3, 4, size=(n, d)).astype(F32)
    base[rng.integers(0, n, n // 4)] = base[rng.integers(0, n, n // 4)]
    base[rng.integers(0, n, 3)] = 0
    queries = np.zeros((nq, d), dtype=F32)
    for i in range(nq):
        cols = rng.choice(d, 4, replace=False)
        queries[i, cols] = rng.choice([-1.0, 1.0], 4)
    return queries, base.astype(dtype)


def random_data(seed, n=3000, d=48, nq=7, dtype=F32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((nq, d)).astype(F32), rng.standard_normal((n, d)).astype(dtype)


def assert_same_topk(got, ref):
    """Exact equality of ids and scores."""
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


def assert_close_topk(got, ref, all_scores, rtol=2e-5):
    """Scores equal within float32 rounding; any id difference must be a near tie in the reference."""
    g_scores, g_ids = got
    r_scores, r_ids, _ = ref
    scale = max(1.0, float(np.nanmax(np.abs(all_scores[np.isfinite(all_scores)]), initial=1.0)))
    np.testing.assert_allclose(g_scores, r_scores, rtol=0, atol=rtol * scale)
    for i, j in zip(*np.nonzero(g_ids != r_ids), strict=True):
        assert g_ids[i, j] >= 0 and r_ids[i, j] >= 0, "padding differs"
        gap = abs(float(all_scores[i, g_ids[i, j]]) - float(all_scores[i, r_ids[i, j]]))
        assert gap <= rtol * scale, f"query {i} slot {j}: id {g_ids[i, j]} vs {r_ids[i, j]}, gap {gap}"


# ------------------------------------------------------------------------------------------------
# CPU path against the reference


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_cpu_matches_reference_exactly_on_exact_data(metric, dtype, k):
    queries, base = exact_data(1, dtype=dtype)
    got = topk(queries, base, k, metric)
    ref = reference(queries, base, k, metric)
    assert got[0].dtype == F32 and got[1].dtype == np.int64
    assert got[0].shape == got[1].shape == (queries.shape[0], k)
    assert_same_topk(got, ref)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [F32, np.float16, np.float64])
def test_cpu_matches_reference_on_random_data(metric, dtype):
    queries, base = random_data(2, dtype=dtype)
    ref = reference(queries, base, 10, metric)
    assert_close_topk(topk(queries, base, 10, metric), ref, ref[2])


@pytest.mark.parametrize("metric", METRICS)
def test_single_query_is_a_batch_of_one(metric):
    queries, base = random_data(3)
    single = topk(queries[2], base, 5, metric)
    batch = topk(queries, base, 5, metric)
    assert single[0].shape == single[1].shape == (1, 5)
    np.testing.assert_array_equal(single[1][0], batch[1][2])
    np.testing.assert_allclose(single[0][0], batch[0][2], rtol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_chunking_and_query_blocks_do_not_change_the_answer(metric):
    queries, base = exact_data(4, n=1000, nq=9)
    prepared = prepare_queries(host_queries(queries, base.shape[1]), metric, base.dtype)
    whole = kcpu.topk_composites(prepared, base, 25, metric)
    for chunk_rows, query_block in [(7, 2), (1, 1), (25, 4), (999, 9), (64, 100)]:
        part = kcpu.topk_composites(prepared, base, 25, metric, chunk_rows=chunk_rows, query_block=query_block)
        np.testing.assert_array_equal(part, whole)
    assert_same_topk(kkeys.decode(np, whole, metric), reference(queries, base, 25, metric))


@pytest.mark.parametrize("metric", METRICS)
def test_ties_are_broken_by_lower_id(metric):
    rng = np.random.default_rng(5)
    row = rng.integers(-3, 4, size=16).astype(F32)
    base = np.tile(row, (50, 1))
    group = [3, 11, 40]
    base[group] = row + 1  # a second group of identical rows
    rest = [j for j in range(50) if j not in group]
    queries = np.ones((2, 16), dtype=F32)
    scores, ids = topk(queries, base, 50, metric)
    group_first = scores[0, 0] == reference(queries, base, 1, metric)[2][0, 3]
    expected = group + rest if group_first else rest + group
    assert ids.tolist() == [expected, expected]


def test_duplicate_rows_across_chunks_tie_by_id():
    queries, base = exact_data(6, n=300)
    base[250] = base[10]
    base[120] = base[10]
    prepared = prepare_queries(host_queries(queries, base.shape[1]), "ip", base.dtype)
    comp = kcpu.topk_composites(prepared, base, 300, "ip", chunk_rows=50)
    _, ids = kkeys.decode(np, comp, "ip")
    for i in range(queries.shape[0]):
        pos = {int(x): p for p, x in enumerate(ids[i])}
        assert pos[10] < pos[120] < pos[250]


@pytest.mark.parametrize("metric", METRICS)
def test_mask_excludes_rows(metric):
    queries, base = exact_data(7, n=800)
    mask = np.random.default_rng(7).random(800) < 0.3
    got = topk(queries, base, 20, metric, mask=mask)
    assert mask[got[1]].all()
    assert_same_topk(got, reference(queries, base, 20, metric, mask=mask))


@pytest.mark.parametrize("metric", METRICS)
def test_all_false_mask_returns_only_padding(metric):
    queries, base = random_data(8, n=100)
    scores, ids = topk(queries, base, 4, metric, mask=np.zeros(100, dtype=bool))
    assert (ids == -1).all()
    assert np.isinf(scores).all()
    assert (scores < 0).all() if metric != "l2" else (scores > 0).all()


@pytest.mark.parametrize("metric", METRICS)
def test_fewer_eligible_rows_than_k_are_padded(metric):
    queries, base = random_data(9, n=200)
    mask = np.zeros(200, dtype=bool)
    mask[[5, 77, 150]] = True
    scores, ids = topk(queries, base, 6, metric, mask=mask)
    pad = -np.inf if metric != "l2" else np.inf
    assert (ids[:, 3:] == -1).all() and (scores[:, 3:] == pad).all()
    assert all(sorted(row) == [5, 77, 150] for row in ids[:, :3].tolist())
    ref = reference(queries, base, 6, metric, mask=mask)
    assert_close_topk((scores, ids), ref, ref[2])


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_base_is_padded(metric):
    queries, base = exact_data(10, n=4)
    scores, ids = topk(queries, base, 9, metric)
    assert sorted(ids[0, :4].tolist()) == [0, 1, 2, 3]
    assert (ids[:, 4:] == -1).all() and np.isinf(scores[:, 4:]).all()
    assert_same_topk((scores, ids), reference(queries, base, 9, metric))


def test_empty_queries_and_empty_base():
    queries, base = random_data(11, n=50)
    scores, ids = topk(queries[:0], base, 3)
    assert scores.shape == ids.shape == (0, 3)
    scores, ids = topk(queries, base[:0], 3, "l2")
    assert (ids == -1).all() and (scores == np.inf).all()


def test_cosine_zero_vectors_score_zero():
    base = np.zeros((6, 4), dtype=F32)
    base[2] = [3, 0, 0, 0]
    scores, ids = topk(np.zeros(4, dtype=F32), base, 6, "cosine")
    assert (scores == 0).all() and ids[0].tolist() == [0, 1, 2, 3, 4, 5]
    scores, ids = topk(np.array([-1.0, 0, 0, 0]), base, 6, "cosine")
    assert ids[0].tolist() == [0, 1, 3, 4, 5, 2] and scores[0, -1] == -1.0
    assert not np.signbit(scores[0, :5]).any()  # -0.0 is normalised to +0.0


def test_cosine_normalises_queries_and_rows():
    queries, base = random_data(12)
    scores, ids = topk(queries * 7.5, base * 3.0, 5, "cosine")
    unit = base[ids[0]] / np.linalg.norm(base[ids[0]], axis=1, keepdims=True)
    expected = unit @ (queries[0] / np.linalg.norm(queries[0]))
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)
    assert (scores <= 1.0 + 1e-6).all()


def test_fp16_base_uses_fp16_rounded_queries():
    rng = np.random.default_rng(13)
    base = rng.standard_normal((500, 32)).astype(np.float16)
    queries = rng.standard_normal((3, 32)).astype(F32)
    scores, ids = topk(queries, base, 5, "ip")
    exact = queries.astype(np.float16).astype(np.float64) @ base.astype(np.float64).T
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), rtol=1e-5, atol=1e-5)


def test_nan_rows_in_base_are_never_returned():
    queries, base = random_data(14, n=100)
    base[[4, 50]] = np.nan
    for metric in METRICS:
        _, ids = topk(queries, base, 100, metric)
        assert not np.isin(ids, [4, 50]).any()
        assert (ids[:, -2:] == -1).all()


def test_l2_scores_are_squared_distances():
    queries, base = random_data(15)
    scores, ids = topk(queries, base, 3, "l2")
    expected = ((queries[:, None, :] - base[ids]) ** 2).sum(axis=2)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) >= 0).all()


def test_integer_queries_are_accepted():
    queries, base = exact_data(16)
    got = topk(queries.astype(np.int64), base, 5, "ip")
    assert_same_topk(got, reference(queries, base, 5, "ip"))


def test_keys_order_like_scores_and_round_trip():
    values = np.array([-np.inf, -3.5, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 2.0, 3e38, np.inf], dtype=F32)
    for metric in METRICS:
        keys = kkeys.score_keys(np, values, metric)
        ranked = np.argsort(keys.astype(np.int64), kind="stable")
        if metric == "l2":
            assert (np.diff(values[ranked[::-1]]) >= 0).all() and keys.min() > 0
        else:
            assert (np.diff(values[ranked]) >= 0).all() and keys.min() > 0
        comp = kkeys.composites(np, keys, np.arange(values.size, dtype=np.uint64))
        scores, ids = kkeys.decode(np, comp, metric)
        np.testing.assert_array_equal(scores.view(np.uint32), values.view(np.uint32))
        assert ids.tolist() == list(range(values.size))
    assert kkeys.score_keys(np, np.array([np.nan], dtype=F32), "ip")[0] == 0


# ------------------------------------------------------------------------------------------------
# Bad input


def _bad_cases():
    queries, base = random_data(20, n=10, d=4, nq=2)
    nan_q = queries.copy()
    nan_q[1, 2] = np.nan
    inf_q = queries.copy()
    inf_q[0, 0] = np.inf
    return [
        ("metric dot", dict(metric="dot"), UnknownMetricError, "unknown metric 'dot'"),
        ("metric None", dict(metric=None), UnknownMetricError, "unknown metric"),
        ("k zero", dict(k=0), InvalidKError, "must be >= 1"),
        ("k negative", dict(k=-3), InvalidKError, "must be >= 1"),
        ("k huge", dict(k=MAX_K + 1), InvalidKError, "absurdly large"),
        ("k float", dict(k=2.5), InvalidKError, "must be an integer"),
        ("k bool", dict(k=True), InvalidKError, "must be an integer"),
        ("query dim", dict(queries=queries[:, :3]), ShapeError, "does not match the base dimension 4"),
        ("query 3-D", dict(queries=queries[None]), ShapeError, "3-D"),
        ("query strings", dict(queries=np.array([["a"] * 4])), DTypeError, "real numeric"),
        ("query NaN", dict(queries=nan_q), NonFiniteInputError, "NaN or inf (first at query 1, component 2"),
        ("query inf", dict(queries=inf_q), NonFiniteInputError, "NaN or inf"),
        ("base 1-D", dict(base=base[0]), ShapeError, "must be 2-D"),
        ("base int", dict(base=base.astype(np.int32)), DTypeError, "float16 or float32"),
        ("base list", dict(base=base.tolist()), DTypeError, "numpy or CuPy array"),
        ("base d=0", dict(base=base[:, :0], queries=queries[:, :0]), ShapeError, "d must be >= 1"),
        ("mask length", dict(mask=np.ones(9, dtype=bool)), MaskError, "length 9 does not match the 10"),
        ("mask dtype", dict(mask=np.ones(10, dtype=np.int8)), MaskError, "dtype must be bool"),
        ("mask 2-D", dict(mask=np.ones((10, 1), dtype=bool)), MaskError, "1-D"),
        ("device", dict(device="tpu"), InvalidDeviceError, "unknown device 'tpu'"),
        ("fp16 overflow", dict(base=base.astype(np.float16), queries=queries * 1e5), NonFiniteInputError,
         "float16 range"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_typed_errors(case):
    _, overrides, exc_type, message = case
    queries, base = random_data(20, n=10, d=4, nq=2)
    args = dict(queries=queries, base=base, k=3, metric="ip", mask=None, device="cpu")
    args.update(overrides)
    with pytest.raises(exc_type) as info:
        topk(**args)
    assert isinstance(info.value, KernelInputError) and isinstance(info.value, ValueError)
    assert message in str(info.value)


@pytest.mark.skipif(GPU_OK, reason="a GPU is available here, so device='gpu' does not fail")
def test_device_gpu_without_gpu_raises():
    queries, base = random_data(21, n=10)
    with pytest.raises(GpuUnavailableError, match="cannot run"):
        topk(queries, base, 3, device="gpu")


def test_import_does_not_need_cupy():
    code = "import sys, knowledge.kernels as k, knowledge.kernels.topk; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_available_reports_and_logs_once(caplog):
    gpu_available.cache_clear()
    with caplog.at_level(logging.INFO, logger="knowledge.kernels"):
        first = gpu_available()
        second = gpu_available()
    assert first == second and isinstance(first[0], bool) and first[1]
    records = [r for r in caplog.records if r.name == "knowledge.kernels"]
    assert len(records) == 1 and first[1] in records[0].getMessage()


# ------------------------------------------------------------------------------------------------
# CUDA sources compile


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH, so the CUDA sources cannot be compiled here")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile_to_ptx(tmp_path, arch):
    sources = kgpu.cuda_source_paths()
    assert sources, "no .cu files found next to knowledge.kernels.gpu"
    for src in sources:
        out = tmp_path / f"{src.stem}.{arch}.ptx"
        proc = subprocess.run([NVCC, "--ptx", f"-arch={arch}", str(src), "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"nvcc failed for {src.name}:\n{proc.stderr}"
        ptx = out.read_text()
        for name in kgpu.KERNEL_NAMES:
            assert f".entry {name}(" in ptx, f"kernel {name} missing from {src.name}"


# ------------------------------------------------------------------------------------------------
# GPU path == CPU path (needs a GPU)


def _cupy():
    import cupy

    return cupy


def _gpu_vs_cpu(queries, base, k, metric, mask=None):
    cp = _cupy()
    g_scores, g_ids = topk(cp.asarray(queries), cp.asarray(base), k, metric,
                           None if mask is None else cp.asarray(mask))
    return (cp.asnumpy(g_scores), cp.asnumpy(g_ids)), topk(queries, base, k, metric, mask)


@requires_gpu
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("nq", [1, 3, 40])
def test_gpu_equals_cpu_exactly_on_exact_data(metric, dtype, nq):
    queries, base = exact_data(30, n=5000, nq=nq, dtype=dtype)
    mask = np.random.default_rng(30).random(5000) < 0.8
    for m in (None, mask):
        gpu_res, cpu_res = _gpu_vs_cpu(queries, base, 17, metric, m)
        assert_same_topk(gpu_res, cpu_res)


@requires_gpu
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("nq", [1, 4, 33])
def test_gpu_matches_cpu_on_random_data(metric, dtype, nq):
    queries, base = random_data(31, n=20000, d=64, nq=nq, dtype=dtype)
    gpu_res, cpu_res = _gpu_vs_cpu(queries, base, 10, metric)
    ref = reference(queries, base, 10, metric)
    assert_close_topk(gpu_res, ref, ref[2])
    assert_close_topk(cpu_res, ref, ref[2])
    assert (gpu_res[1] == cpu_res[1]).mean() > 0.99


@requires_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_padding_masks_and_large_k(metric):
    queries, base = exact_data(32, n=3000, nq=3)
    for k, mask in [(5, np.zeros(3000, dtype=bool)), (4000, None), (2500, np.arange(3000) % 3 == 0)]:
        gpu_res, cpu_res = _gpu_vs_cpu(queries, base, k, metric, mask)
        assert_same_topk(gpu_res, cpu_res)


@requires_gpu
@pytest.mark.parametrize("nq", [2, 50])
def test_gpu_select_kernel_equals_sort_and_chunking(monkeypatch, nq):
    cp = _cupy()
    queries, base = exact_data(33, n=7000, nq=nq)
    prepared = prepare_queries(host_queries(queries, base.shape[1]), "cosine", base.dtype)
    by_kernel = kgpu.topk_composites(prepared, cp.asarray(base), 100, "cosine", select="kernel")
    by_sort = kgpu.topk_composites(prepared, cp.asarray(base), 100, "cosine", select="sort")
    np.testing.assert_array_equal(cp.asnumpy(by_kernel), cp.asnumpy(by_sort))
    monkeypatch.setattr(kgpu, "_MIN_CHUNK", 1000)
    monkeypatch.setattr(kgpu, "_SCORE_BUDGET", 1000)
    chunked = kgpu.topk_composites(prepared, cp.asarray(base), 100, "cosine")
    np.testing.assert_array_equal(cp.asnumpy(chunked), cp.asnumpy(by_kernel))
    cpu_comp = kcpu.topk_composites(prepared, base, 100, "cosine")
    np.testing.assert_array_equal(cp.asnumpy(by_kernel), cpu_comp)


@requires_gpu
@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("d", [13, 16])
def test_gpu_scalar_and_vector_loads_and_unaligned_views(dtype, d):
    cp = _cupy()
    queries, base = exact_data(35, n=2000, d=d, nq=9, dtype=dtype)
    flat = cp.zeros(base.size + 3, dtype=dtype)
    flat[3:] = cp.asarray(base.ravel())
    unaligned = flat[3:].reshape(base.shape)  # rows start off a 16-byte boundary: scalar loads
    for metric in METRICS:
        for nq in (1, 2, 9):
            expected = topk(queries[:nq], base, 11, metric)
            for device_base in (cp.asarray(base), unaligned):
                got = topk(cp.asarray(queries[:nq]), device_base, 11, metric)
                assert_same_topk((cp.asnumpy(got[0]), cp.asnumpy(got[1])), expected)


@requires_gpu
def test_numpy_inputs_on_device_gpu_return_numpy():
    queries, base = exact_data(34)
    scores, ids = topk(queries, base, 5, "ip", device="gpu")
    assert isinstance(scores, np.ndarray) and isinstance(ids, np.ndarray)
    assert_same_topk((scores, ids), topk(queries, base, 5, "ip"))


@pytest.mark.parametrize(("d", "dtype", "unroll"), [(8, np.float16, 2), (384, np.float16, 6), (1024, np.float16, 16),
                                                    (1032, np.float16, None), (384, F32, 12), (13, F32, None),
                                                    (512, F32, 16), (516, F32, None)])
def test_batch1_scan_unroll_covers_each_row_width(d, dtype, unroll):
    assert kgpu.scan1_unroll(d, np.dtype(dtype)) == unroll


@requires_gpu
@pytest.mark.parametrize("dtype", [F32, np.float16])
@pytest.mark.parametrize("d", [8, 24, 384, 1000, 1024])
def test_gpu_batch1_scan_equals_general_scan_bit_for_bit(dtype, d):
    """Same per-lane order of products, same reduction: the batch-1 kernel's dots and norms are the general
    kernel's bit for bit, on random data, for a query and for norms alone, over rows not a multiple of 4."""
    cp = _cupy()
    rng = np.random.default_rng(d)
    base = cp.asarray(rng.standard_normal((4099, d)).astype(dtype))
    query = cp.asarray(rng.standard_normal((1, d)).astype(np.float16).astype(F32))
    for queries in (query, query[:0]):
        fast = kgpu.scan_dots(cp, base, queries, True)
        general = kgpu.scan_dots(cp, base, queries, True, kernel="general")
        if queries.shape[0]:
            assert cp.array_equal(fast[0], general[0])
        assert cp.array_equal(fast[1], general[1])
