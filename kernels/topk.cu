// GPU twin of knowledge.kernels (loaded with cupy.RawModule; compiled by NVRTC for the running GPU).
//
// Ranking uses the same 64-bit composite as kernels/keys.py:
//     composite = (key << 32) | (0xFFFFFFFF - id),  0 = not eligible (masked out or NaN score)
// so "k largest composites" is exactly "k best scores, ties broken by lower id". finish_score,
// score_key and make_comp below must stay operation-for-operation identical to keys.py.
//
// Kernels (all extern "C"; no headers needed, fp16 is converted with inline PTX):
//   scan_dots_f16 / scan_dots_f32   fused read of the base: dot products with up to SCAN_MAX_NQ
//                                   queries and the rows' squared norms, fp32 accumulation.
//   scan1_f16_uU / scan1_f32_uU     the same for one query (or none) and 16-byte rows of at most
//                                   8*U vectors, all of a row's loads in flight at once (batch 1).
//   select_chunk                    masked per-query top-k of one chunk of dot products, split into
//                                   segments (grid = segments x queries); unsorted candidates.
//   merge_topk                      per query: top-k of (running top-k + candidates), sorted.
//   chunk_composites                all composites of a chunk (for k above the select limit).
// Requires compute capability >= 7.0 (__match_any_sync).

typedef unsigned long long u64;
typedef unsigned int u32;

#define METRIC_IP 0
#define METRIC_COSINE 1
#define METRIC_L2 2

#define SCAN_MAX_NQ 4
#define SCAN_TEAM 8
#define RADIX_BINS 256

// ---------------------------------------------------------------------------------------------
// Score arithmetic (twin of keys.finish_scores / score_keys / composites). _rn intrinsics keep
// the compiler from contracting into FMAs, so results match numpy's float32 bit for bit.

__device__ __forceinline__ float finish_score(float dot, float bn2, float qn2, int metric) {
    float s;
    if (metric == METRIC_IP) {
        s = dot;
    } else if (metric == METRIC_COSINE) {
        const float nrm = __fsqrt_rn(bn2);
        s = (nrm == 0.0f) ? 0.0f : __fdiv_rn(dot, nrm);
    } else {
        s = __fsub_rn(__fadd_rn(qn2, bn2), __fmul_rn(2.0f, dot));
        s = (s < 0.0f) ? 0.0f : s;
    }
    return __fadd_rn(s, 0.0f);  // -0.0 -> +0.0
}

__device__ __forceinline__ u32 score_key(float s, int metric) {
    if (s != s) return 0u;  // NaN: never eligible
    const u32 u = __float_as_uint(s);
    const u32 o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (metric == METRIC_L2) ? ~o : o;
}

__device__ __forceinline__ u64 make_comp(u32 key, long long id) {
    if (key == 0u) return 0ull;
    return ((u64)key << 32) | (u64)(0xFFFFFFFFu - (u32)id);
}

// ---------------------------------------------------------------------------------------------
// Candidate sources for the block-wide select.

struct ChunkSource {           // composites computed on the fly from one segment of dot products
    const float* dots;         // this query's dot products, already offset to the segment
    const float* bn2;          // base squared norms for the segment (unused for ip)
    const unsigned char* mask; // eligibility for the segment (unused when has_mask == 0)
    float qn2;
    int metric;
    int has_mask;
    long long id0;             // row id of the segment's first element

    __device__ __forceinline__ u64 get(int i) const {
        if (has_mask && !mask[i]) return 0ull;
        const float b = (metric == METRIC_IP) ? 0.0f : bn2[i];
        return make_comp(score_key(finish_score(dots[i], b, qn2, metric), metric), id0 + i);
    }
};

struct PairSource {            // concatenation of two composite arrays
    const u64* a;
    const u64* b;
    int na;

    __device__ __forceinline__ u64 get(int i) const { return (i < na) ? a[i] : b[i - na]; }
};

struct SelectState {
    u32 hist[RADIX_BINS];
    u64 sel_val;    // decided high bits of the threshold
    u64 sel_mask;   // which bits are decided
    u32 zeros;      // ineligible entries seen in the first pass
    u32 count;      // entries written by collect
    int remaining;  // how many of the k still lie at or below the undecided bits
    int done;
};

// One radix pass over the digit at `shift` of every candidate whose decided bits match.
template <class Src>
__device__ void radix_histogram(const Src& src, int len, int shift, SelectState& st, bool count_zeros) {
    const int tid = threadIdx.x, lane = tid & 31;
    for (int b = tid; b < RADIX_BINS; b += blockDim.x) st.hist[b] = 0u;
    __syncthreads();
    const u64 sv = st.sel_val, sm = st.sel_mask;
    u32 my_zeros = 0u;
    for (int base = 0; base < len; base += blockDim.x) {  // uniform trip count: full warps below
        const int i = base + tid;
        const bool in_range = i < len;
        const u64 v = in_range ? src.get(i) : 0ull;
        if (count_zeros && in_range && v == 0ull) ++my_zeros;
        const bool match = in_range && ((v & sm) == sv);
        const u32 digit = match ? (u32)((v >> shift) & 0xFFull) : 0x100u;
        const u32 peers = __match_any_sync(0xFFFFFFFFu, digit);
        if (match && lane == __ffs(peers) - 1) atomicAdd(&st.hist[digit], (u32)__popc(peers));
    }
    if (my_zeros) atomicAdd(&st.zeros, my_zeros);
    __syncthreads();
}

// Thread 0: find the bucket holding the k-th largest and narrow the threshold to it.
__device__ void radix_choose(int len, int k, int shift, SelectState& st, bool first) {
    if (first && (u32)len - st.zeros <= (u32)k) {  // everything eligible fits: take all non-zero
        st.sel_val = 1ull;
        st.sel_mask = ~0ull;
        st.done = 1;
        return;
    }
    const u32 rem = (u32)st.remaining;
    u32 above = 0u;
    int b = RADIX_BINS - 1;
    for (; b > 0; --b) {
        if (above + st.hist[b] >= rem) break;
        above += st.hist[b];
    }
    st.remaining = (int)(rem - above);
    st.sel_val |= ((u64)b << shift);
    st.sel_mask |= (0xFFull << shift);
    if (st.hist[b] == (u32)st.remaining) st.done = 1;  // the whole bucket is in the top-k
}

// Block-wide exact top-k of `len` composites: writes the (unsorted) selected composites to out[0..k),
// padding with 0. Eligible composites are unique, so exactly min(k, #eligible) entries are selected.
template <class Src>
__device__ void block_select(const Src& src, int len, int k, u64* out, SelectState& st) {
    const int tid = threadIdx.x;
    if (tid == 0) {
        st.sel_val = 0ull;
        st.sel_mask = 0ull;
        st.zeros = 0u;
        st.count = 0u;
        st.remaining = k;
        st.done = 0;
    }
    __syncthreads();
    for (int shift = 56; shift >= 0; shift -= 8) {
        radix_histogram(src, len, shift, st, shift == 56);
        if (tid == 0) radix_choose(len, k, shift, st, shift == 56);
        __syncthreads();
        if (st.done) break;
    }
    const u64 sv = st.sel_val, sm = st.sel_mask;
    for (int base = 0; base < len; base += blockDim.x) {
        const int i = base + tid;
        if (i < len) {
            const u64 v = src.get(i);
            if (v != 0ull && (v & sm) >= sv) {
                const u32 pos = atomicAdd(&st.count, 1u);
                if (pos < (u32)k) out[pos] = v;
            }
        }
    }
    __syncthreads();
    const int filled = min((int)st.count, k);
    for (int j = filled + tid; j < k; j += blockDim.x) out[j] = 0ull;
    __syncthreads();
}

// Descending bitonic sort of p (a power of two) composites in shared memory.
__device__ void bitonic_sort_desc(u64* s, int p) {
    for (int size = 2; size <= p; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = threadIdx.x; t < (p >> 1); t += blockDim.x) {
                const int i = 2 * t - (t & (stride - 1));
                const int j = i + stride;
                const bool desc = (i & size) == 0;
                const u64 a = s[i], b = s[j];
                if (desc ? (a < b) : (a > b)) {
                    s[i] = b;
                    s[j] = a;
                }
            }
            __syncthreads();
        }
    }
}

// grid = (segments, nq). dots: [nq, ld] row-major; segment s covers columns [s*seg_len, ...) of m.
// cand: [nq, segments, k] composites (unsorted, 0 padded).
extern "C" __global__ void select_chunk(const float* __restrict__ dots, long long ld,
                                        const float* __restrict__ bn2, const float* __restrict__ qn2,
                                        const unsigned char* __restrict__ mask, int has_mask, int metric,
                                        int m, int seg_len, long long id0, int k, u64* __restrict__ cand) {
    __shared__ SelectState st;
    const int s = blockIdx.x, q = blockIdx.y, segments = gridDim.x;
    const int c0 = s * seg_len;
    const int len = max(0, min(seg_len, m - c0));
    ChunkSource src;
    src.dots = dots + (long long)q * ld + c0;
    src.bn2 = bn2 + ((metric == METRIC_IP) ? 0 : c0);
    src.mask = mask + (has_mask ? c0 : 0);
    src.qn2 = (metric == METRIC_L2) ? qn2[q] : 0.0f;
    src.metric = metric;
    src.has_mask = has_mask;
    src.id0 = id0 + c0;
    block_select(src, len, k, cand + ((long long)q * segments + s) * k, st);
}

// grid = nq, dynamic shared memory = p * 8 bytes (p = power of two >= k).
// out[q] = the k largest of prev[q] (k entries) and cand[q] (ncand entries), sorted descending.
extern "C" __global__ void merge_topk(const u64* __restrict__ prev, const u64* __restrict__ cand,
                                      int ncand, int k, int p, u64* __restrict__ out) {
    extern __shared__ u64 buf[];
    __shared__ SelectState st;
    const int q = blockIdx.x;
    PairSource src;
    src.a = prev + (long long)q * k;
    src.b = cand + (long long)q * ncand;
    src.na = k;
    block_select(src, k + ncand, k, buf, st);
    for (int j = k + threadIdx.x; j < p; j += blockDim.x) buf[j] = 0ull;
    __syncthreads();
    bitonic_sort_desc(buf, p);
    for (int j = threadIdx.x; j < k; j += blockDim.x) out[(long long)q * k + j] = buf[j];
}

// Every composite of a chunk: out [nq, m]. Used when k is above the select kernel's limit.
extern "C" __global__ void chunk_composites(const float* __restrict__ dots, long long ld,
                                            const float* __restrict__ bn2, const float* __restrict__ qn2,
                                            const unsigned char* __restrict__ mask, int has_mask, int metric,
                                            int m, int nq, long long id0, u64* __restrict__ out) {
    const long long total = (long long)nq * m;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int q = (int)(t / m), c = (int)(t % m);
        ChunkSource src;
        src.dots = dots + (long long)q * ld;
        src.bn2 = bn2;
        src.mask = mask;
        src.qn2 = (metric == METRIC_L2) ? qn2[q] : 0.0f;
        src.metric = metric;
        src.has_mask = has_mask;
        src.id0 = id0;
        out[t] = src.get(c);
    }
}

// ---------------------------------------------------------------------------------------------
// Fused scan: one pass over the base computing dot products with nq <= SCAN_MAX_NQ queries and,
// when want_norms, each row's squared norm. A team of SCAN_TEAM lanes reads one row with 16-byte
// loads (vec != 0: d a multiple of 16/sizeof(elem) and 16-byte aligned rows) or scalar loads.
// Queries live in shared memory as float32; accumulation is float32.

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ void unpack(const uint4& w, float* x, const unsigned short*) {
    const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        x[2 * j] = h2f((unsigned short)(words[j] & 0xFFFFu));
        x[2 * j + 1] = h2f((unsigned short)(words[j] >> 16));
    }
}

__device__ __forceinline__ void unpack(const uint4& w, float* x, const float*) {
    x[0] = __uint_as_float(w.x);
    x[1] = __uint_as_float(w.y);
    x[2] = __uint_as_float(w.z);
    x[3] = __uint_as_float(w.w);
}

__device__ __forceinline__ float load_scalar(const unsigned short* p) { return h2f(p[0]); }
__device__ __forceinline__ float load_scalar(const float* p) { return p[0]; }

template <class T>
__device__ __forceinline__ void accumulate(const float* x, int e, int width, const float* qs, int d, int nq,
                                           float* acc, float& sq) {
#pragma unroll
    for (int c = 0; c < width; ++c) {
        sq = fmaf(x[c], x[c], sq);
#pragma unroll
        for (int qi = 0; qi < SCAN_MAX_NQ; ++qi) {
            if (qi < nq) acc[qi] = fmaf(x[c], qs[qi * d + e + c], acc[qi]);
        }
    }
}

template <class T>
__device__ void scan_row(const T* __restrict__ row, int d, int vec, int t, const float* qs, int nq,
                         float* acc, float& sq) {
    const int width = 16 / (int)sizeof(T);
    if (vec) {
        const uint4* vp = reinterpret_cast<const uint4*>(row);
        const int nv = d / width;
#pragma unroll 2
        for (int v = t; v < nv; v += SCAN_TEAM) {
            const uint4 w = __ldg(vp + v);
            float x[16 / sizeof(T)];
            unpack(w, x, row);
            accumulate<T>(x, v * width, width, qs, d, nq, acc, sq);
        }
    } else {
        for (int e = t; e < d; e += SCAN_TEAM) {
            float x[1];
            x[0] = load_scalar(row + e);
            accumulate<T>(x, e, 1, qs, d, nq, acc, sq);
        }
    }
}

template <class T>
__device__ void scan_impl(const T* __restrict__ base, long long n, int d, int vec,
                          const float* __restrict__ queries, int nq, int want_norms,
                          float* __restrict__ dots, float* __restrict__ bn2) {
    extern __shared__ float qs[];
    for (int j = threadIdx.x; j < nq * d; j += blockDim.x) qs[j] = queries[j];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int t = lane & (SCAN_TEAM - 1);
    const int team = lane / SCAN_TEAM;
    const int teams_per_warp = 32 / SCAN_TEAM;
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r0 = warp * teams_per_warp; r0 < n; r0 += nwarps * teams_per_warp) {  // warp-uniform
        const long long row = r0 + team;
        const bool valid = row < n;
        float acc[SCAN_MAX_NQ];
#pragma unroll
        for (int qi = 0; qi < SCAN_MAX_NQ; ++qi) acc[qi] = 0.0f;
        float sq = 0.0f;
        if (valid) scan_row(base + row * d, d, vec, t, qs, nq, acc, sq);
#pragma unroll
        for (int off = SCAN_TEAM / 2; off > 0; off >>= 1) {
            sq += __shfl_xor_sync(0xFFFFFFFFu, sq, off);
#pragma unroll
            for (int qi = 0; qi < SCAN_MAX_NQ; ++qi) acc[qi] += __shfl_xor_sync(0xFFFFFFFFu, acc[qi], off);
        }
        if (valid && t == 0) {
            for (int qi = 0; qi < nq; ++qi) dots[qi * n + row] = acc[qi];
            if (want_norms) bn2[row] = sq;
        }
    }
}

// Batch-1 scan: at most one query (nq 0 or 1), 16-byte loads (vec rows), at most SCAN_TEAM * U
// 16-byte vectors a row. Each lane issues all of its U loads of a row before using any of them, so a
// warp keeps 32 * U loads in flight (the general scan above has about two a lane), and reads the
// query from shared memory 16 bytes at a time.
template <class T, int U>
__device__ void scan1_impl(const T* __restrict__ base, long long n, int d, const float* __restrict__ query,
                           int nq, int want_norms, float* __restrict__ dots, float* __restrict__ bn2) {
    constexpr int W = 16 / (int)sizeof(T);
    extern __shared__ float4 qs4[];
    float* qs = reinterpret_cast<float*>(qs4);
    for (int j = threadIdx.x; j < nq * d; j += blockDim.x) qs[j] = query[j];
    __syncthreads();
    const int nv = d / W;
    const int lane = threadIdx.x & 31;
    const int t = lane & (SCAN_TEAM - 1);
    const int team = lane / SCAN_TEAM;
    const int teams_per_warp = 32 / SCAN_TEAM;
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    const uint4* __restrict__ rows = reinterpret_cast<const uint4*>(base);
    for (long long r0 = warp * teams_per_warp; r0 < n; r0 += nwarps * teams_per_warp) {  // warp-uniform
        const long long row = r0 + team;
        const bool valid = row < n;
        uint4 w[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int v = t + u * SCAN_TEAM;
            w[u] = (valid && v < nv) ? __ldg(rows + row * nv + v) : make_uint4(0u, 0u, 0u, 0u);
        }
        float acc = 0.0f, sq = 0.0f;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int v = t + u * SCAN_TEAM;
            if (v < nv) {
                float x[W];
                unpack(w[u], x, base);
#pragma unroll
                for (int c = 0; c < W; ++c) sq = fmaf(x[c], x[c], sq);
                if (nq) {
#pragma unroll
                    for (int c4 = 0; c4 < W / 4; ++c4) {
                        const float4 q = qs4[(v * W) / 4 + c4];
                        acc = fmaf(x[4 * c4], q.x, acc);
                        acc = fmaf(x[4 * c4 + 1], q.y, acc);
                        acc = fmaf(x[4 * c4 + 2], q.z, acc);
                        acc = fmaf(x[4 * c4 + 3], q.w, acc);
                    }
                }
            }
        }
#pragma unroll
        for (int off = SCAN_TEAM / 2; off > 0; off >>= 1) {
            sq += __shfl_xor_sync(0xFFFFFFFFu, sq, off);
            acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off);
        }
        if (valid && t == 0) {
            if (nq) dots[row] = acc;
            if (want_norms) bn2[row] = sq;
        }
    }
}

#define KNOWLEDGE_SCAN1(U)                                                                                  \
    extern "C" __global__ void scan1_f16_u##U(const unsigned short* __restrict__ base, long long n, int d,  \
                                              const float* __restrict__ query, int nq, int want_norms,     \
                                              float* __restrict__ dots, float* __restrict__ bn2) {         \
        scan1_impl<unsigned short, U>(base, n, d, query, nq, want_norms, dots, bn2);                       \
    }                                                                                                       \
    extern "C" __global__ void scan1_f32_u##U(const float* __restrict__ base, long long n, int d,           \
                                              const float* __restrict__ query, int nq, int want_norms,     \
                                              float* __restrict__ dots, float* __restrict__ bn2) {         \
        scan1_impl<float, U>(base, n, d, query, nq, want_norms, dots, bn2);                                \
    }

// dots: [n] (ignored when nq == 0), bn2: [n] (written when want_norms). Shared: nq*d*4 bytes.
KNOWLEDGE_SCAN1(2)
KNOWLEDGE_SCAN1(4)
KNOWLEDGE_SCAN1(6)
KNOWLEDGE_SCAN1(8)
KNOWLEDGE_SCAN1(12)
KNOWLEDGE_SCAN1(16)

// dots: [nq, n] (ignored when nq == 0), bn2: [n] (written when want_norms). Shared: nq*d*4 bytes.
extern "C" __global__ void scan_dots_f16(const unsigned short* __restrict__ base, long long n, int d, int vec,
                                         const float* __restrict__ queries, int nq, int want_norms,
                                         float* __restrict__ dots, float* __restrict__ bn2) {
    scan_impl(base, n, d, vec, queries, nq, want_norms, dots, bn2);
}

extern "C" __global__ void scan_dots_f32(const float* __restrict__ base, long long n, int d, int vec,
                                         const float* __restrict__ queries, int nq, int want_norms,
                                         float* __restrict__ dots, float* __restrict__ bn2) {
    scan_impl(base, n, d, vec, queries, nq, want_norms, dots, bn2);
}
