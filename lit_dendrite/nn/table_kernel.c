/* The frozen table's CPU kernel: LayerNorm statistics, then normalise + box map + bilinear lookup + range check +
 * max-pool in one pass over a dendritic layer's pre-activations. Built and loaded by lit_dendrite/nn/native.py.
 *
 * Layout: `samples` maps of (height, width, units, 2) floats, one LayerNorm each; unit u of a pixel reads its
 * pair. Grid coordinates of a pair: u = (x0 - mean) * rstd * scale[0] + offset[0], the same for v with index 1,
 * in [0, grid - 1] inside the box. `cells` holds (grid - 1)^2 cells, v-major, of 4 coefficients:
 * value = c0 + fu * c1 + fv * (c2 + fu * c3) with fu, fv the position inside the cell. A pair outside the box (or
 * NaN) gets NaN, which the pool propagates, and is counted per output row: the caller evaluates those exactly. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define BLOCK 4096 /* LayerNorm statistics: floats summed in single precision before a double */
#define LANES 16

static int64_t lookup_pairs(const float *restrict x, float *restrict out, int64_t n, float a0, float b0, float a1,
                            float b1, const float *restrict cells, int grid)
{
    const float top = (float)(grid - 1);
    const int last = grid - 2, stride = grid - 1;
    int64_t outside = 0;
    int64_t r = 0;
#ifdef __AVX512F__
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i pick01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i pick23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    const __m512i first8 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i second8 = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512 va0 = _mm512_set1_ps(a0), vb0 = _mm512_set1_ps(b0), va1 = _mm512_set1_ps(a1);
    const __m512 vb1 = _mm512_set1_ps(b1), zero = _mm512_setzero_ps(), vtop = _mm512_set1_ps(top);
    const __m512 nan = _mm512_set1_ps(NAN);
    const __m512i vlast = _mm512_set1_epi32(last), vstride = _mm512_set1_epi32(stride);
    int32_t cell[LANES];
    for (; r + LANES <= n; r += LANES) {
        const __m512 lo = _mm512_loadu_ps(x + 2 * r), hi = _mm512_loadu_ps(x + 2 * r + LANES);
        const __m512 u = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, even, hi), va0, vb0);
        const __m512 v = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, odd, hi), va1, vb1);
        const __mmask16 inside = _mm512_cmp_ps_mask(u, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(u, vtop, _CMP_LE_OQ) &
                                 _mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vtop, _CMP_LE_OQ);
        /* max(NaN, 0) is 0: every lane gets a valid cell, outside lanes are overwritten below */
        const __m512 uc = _mm512_min_ps(_mm512_max_ps(u, zero), vtop);
        const __m512 vc = _mm512_min_ps(_mm512_max_ps(v, zero), vtop);
        const __m512i i = _mm512_min_epi32(_mm512_cvttps_epi32(uc), vlast);
        const __m512i j = _mm512_min_epi32(_mm512_cvttps_epi32(vc), vlast);
        const __m512 fu = _mm512_sub_ps(uc, _mm512_cvtepi32_ps(i)), fv = _mm512_sub_ps(vc, _mm512_cvtepi32_ps(j));
        _mm512_storeu_si512(cell, _mm512_add_epi32(_mm512_mullo_epi32(j, vstride), i));
        /* four registers of four cells each (gathers are slower on this class of CPU), then a 16x4 transpose */
        __m512 quad[4];
        for (int g = 0; g < 4; ++g) {
            __m512 q = _mm512_castps128_ps512(_mm_loadu_ps(cells + 4 * (int64_t)cell[4 * g]));
            q = _mm512_insertf32x4(q, _mm_loadu_ps(cells + 4 * (int64_t)cell[4 * g + 1]), 1);
            q = _mm512_insertf32x4(q, _mm_loadu_ps(cells + 4 * (int64_t)cell[4 * g + 2]), 2);
            quad[g] = _mm512_insertf32x4(q, _mm_loadu_ps(cells + 4 * (int64_t)cell[4 * g + 3]), 3);
        }
        const __m512 c01a = _mm512_permutex2var_ps(quad[0], pick01, quad[1]);
        const __m512 c23a = _mm512_permutex2var_ps(quad[0], pick23, quad[1]);
        const __m512 c01b = _mm512_permutex2var_ps(quad[2], pick01, quad[3]);
        const __m512 c23b = _mm512_permutex2var_ps(quad[2], pick23, quad[3]);
        const __m512 c0 = _mm512_permutex2var_ps(c01a, first8, c01b);
        const __m512 c1 = _mm512_permutex2var_ps(c01a, second8, c01b);
        const __m512 c2 = _mm512_permutex2var_ps(c23a, first8, c23b);
        const __m512 c3 = _mm512_permutex2var_ps(c23a, second8, c23b);
        const __m512 value = _mm512_fmadd_ps(fv, _mm512_fmadd_ps(fu, c3, c2), _mm512_fmadd_ps(fu, c1, c0));
        _mm512_storeu_ps(out + r, _mm512_mask_blend_ps(inside, nan, value));
        outside += LANES - __builtin_popcount(inside);
    }
#endif
    for (; r < n; ++r) {
        const float u = x[2 * r] * a0 + b0, v = x[2 * r + 1] * a1 + b1;
        const int inside = (u >= 0.f) & (u <= top) & (v >= 0.f) & (v <= top);
        const float uc = fminf(u > 0.f ? u : 0.f, top), vc = fminf(v > 0.f ? v : 0.f, top);
        const int i = (int)uc < last ? (int)uc : last, j = (int)vc < last ? (int)vc : last;
        const float fu = uc - (float)i, fv = vc - (float)j;
        const float *c = cells + 4 * ((int64_t)j * stride + i);
        out[r] = inside ? c[0] + fu * c[1] + fv * (c[2] + fu * c[3]) : NAN;
        outside += !inside;
    }
    return outside;
}

/* Sums of d and d^2 over m <= BLOCK floats, d = x - centre, in single precision. */
static void block_sums(const float *restrict x, int64_t m, float centre, double *sum, double *square)
{
    float total = 0.f, squares = 0.f;
    int64_t r = 0;
#ifdef __AVX512F__
    const __m512 vcentre = _mm512_set1_ps(centre);
    __m512 vsum = _mm512_setzero_ps(), vsquare = _mm512_setzero_ps();
    for (; r + LANES <= m; r += LANES) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + r), vcentre);
        vsum = _mm512_add_ps(vsum, d);
        vsquare = _mm512_fmadd_ps(d, d, vsquare);
    }
    total = _mm512_reduce_add_ps(vsum);
    squares = _mm512_reduce_add_ps(vsquare);
#endif
    for (; r < m; ++r) {
        const float d = x[r] - centre;
        total += d;
        squares += d * d;
    }
    *sum += total;
    *square += squares;
}

/* Mean and 1 / sqrt(var + eps) of n floats (biased variance, as torch's LayerNorm), in one pass over d = x - centre,
 * with centre the mean of the first block, so that a large mean costs no precision. */
static void layer_norm_stats(const float *x, int64_t n, double eps, float *mean, float *rstd)
{
    const int64_t head = n < BLOCK ? n : BLOCK;
    double head_total = 0.0, unused = 0.0;
    block_sums(x, head, 0.f, &head_total, &unused);
    const float centre = (float)(head_total / (double)head);
    double total = 0.0, squares = 0.0;
    for (int64_t start = 0; start < n; start += BLOCK)
        block_sums(x + start, start + BLOCK < n ? BLOCK : n - start, centre, &total, &squares);
    const double shift = total / (double)n, variance = squares / (double)n - shift * shift;
    *mean = (float)(centre + shift);
    *rstd = (float)(1.0 / sqrt((variance > 0.0 ? variance : 0.0) + eps));
}

/* dst = max(dst, row) over a row of out_width * pool pixels of `units` values pooled by `pool` along the width
 * (dst is set from the first column when `first`); NaN propagates, as in torch's max-pool. */
static void pool_row(const float *restrict row, float *restrict dst, int64_t out_width, int64_t units, int64_t pool,
                     int first)
{
    for (int64_t pw = 0; pw < out_width; ++pw)
        for (int64_t dx = 0; dx < pool; ++dx) {
            const float *src = row + (pw * pool + dx) * units;
            float *d = dst + pw * units;
            if (first && dx == 0)
                for (int64_t u = 0; u < units; ++u) d[u] = src[u];
            else
                for (int64_t u = 0; u < units; ++u) d[u] = (src[u] > d[u]) | (src[u] != src[u]) ? src[u] : d[u];
        }
}

/* Per sample: LayerNorm statistics, then each output row (`pool` input rows looked up, then max-pooled by pool x
 * pool; pool 1 writes the values themselves). Rows and columns past a multiple of `pool` are dropped, as by
 * torch's max-pool. outside[s * (height / pool) + r] counts the pairs outside the box behind output row r.
 * `scratch` holds one row of (width / pool) * pool * units floats per thread. */
void layer_norm_table_lookup(const float *x, float *out, int64_t samples, int64_t height, int64_t width,
                             int64_t units, int64_t pool, double eps, const float *scale, const float *offset,
                             const float *cells, int64_t grid, float *mean, float *rstd, int64_t *outside,
                             float *scratch, int threads)
{
    const int64_t features = height * width * units * 2, out_height = height / pool, out_width = width / pool;
    const int64_t pooled_pairs = out_width * pool * units, out_row = out_width * units;
#pragma omp parallel num_threads(threads)
    {
        float *row = scratch + omp_get_thread_num() * pooled_pairs;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < samples; ++s) {
            const float *xs = x + s * features;
            layer_norm_stats(xs, features, eps, mean + s, rstd + s);
            const float a0 = rstd[s] * scale[0], b0 = offset[0] - mean[s] * a0;
            const float a1 = rstd[s] * scale[1], b1 = offset[1] - mean[s] * a1;
            for (int64_t r = 0; r < out_height; ++r) {
                float *dst = out + (s * out_height + r) * out_row;
                int64_t count = 0;
                for (int64_t dy = 0; dy < pool; ++dy) {
                    const float *src = xs + 2 * (r * pool + dy) * width * units;
                    count += lookup_pairs(src, pool > 1 ? row : dst, pooled_pairs, a0, b0, a1, b1, cells, (int)grid);
                    if (pool > 1) pool_row(row, dst, out_width, units, pool, dy == 0);
                }
                outside[s * out_height + r] = count;
            }
        }
    }
}
