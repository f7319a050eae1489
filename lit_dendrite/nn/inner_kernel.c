/* The exact inner net's CPU kernel: forward and backward of `arity -> h1 -> h2 -> 1` (ReLU) over rows of `arity`
 * floats, fused block by block so that no (rows, h) tensor ever leaves the cache. Backward recomputes h1, and either
 * recomputes h2 or reads its signs, kept by the forward pass at 1 bit per unit. Built and loaded by
 * lit_dendrite/nn/native.py; the autograd function around it is in lit_dendrite/nn/inner_kernels.py.
 *
 * Weights come prepared by the caller: w1t (arity, h1) = W1^T, w2t (h1, h2) = W2^T and, for backward,
 * w2out (h2, h1) = w3[:, None] * W2. Backward needs no h2 values, only their signs: with G = g * [h2 > 0] (g the
 * output gradient), P = G^T relu(h1) and s = colsum(G), the caller forms dW2 = w3 * P, db2 = w3 * s,
 * dw3 = rowsum(W2 * P) + b2 * s and db3 = sum(g); the gradient below is G @ w2out. h1 and h2 must be multiples
 * of 16. Written with GCC vector extensions, so -march=native picks AVX-512, AVX2 or NEON; every value is
 * computed in float32 with fused multiply-adds, and the blocks' weight-gradient sums are added up in double.
 *
 * bf16 products: given w2t and w2out also as bf16 pairs (w2_pairs (h1 / 2, h2, 2), w2out_pairs (h2 / 2, h1, 2): the
 * two rows of a pair side by side per column), the three h1 x h2 products (h2 in forward, P and G @ w2out in
 * backward) round both operands to bf16 and multiply pairs of them into float32 accumulators: AVX512-BF16's
 * vdpbf16ps where the compiler targets it (-march=native on a CPU that has it), else the same products unpacked into
 * float32 fused multiply-adds (also with -DLIT_DENDRITE_PORTABLE_BF16). The thin layers (arity and 1 wide), the
 * gates, the sums and the input gradient stay float32. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && !defined(LIT_DENDRITE_PORTABLE_BF16)
#define BF16_HARDWARE 1
#else
#define BF16_HARDWARE 0
#endif

#define LANES 16
/* Register tiles of TILE_ROWS rows by TILE_VECS vectors: 24 accumulators, 4 weight vectors and a broadcast fit the
 * 32 AVX-512 registers. P's tiles have P_TILE_ROWS rows, which divide h2. Blocks of BLOCK_ROWS rows keep their h1,
 * G and G1 (72 KiB for 64-unit layers) in the L2 cache. One thread, the CNN's first layer (2.7M rows), fwd+bwd: 6-row tiles ran at
 * 125 GFLOP/s and 4-row ones at 90; blocks of 96 rows beat 48 (100) and 192 (90-96). */
#define TILE_ROWS 6
#define TILE_VECS 4
#define P_TILE_ROWS 4
#define BLOCK_ROWS 96

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef int32_t ivec __attribute__((vector_size(4 * LANES)));
typedef uint32_t uvec __attribute__((vector_size(4 * LANES)));
typedef uint16_t bf16vec __attribute__((vector_size(2 * LANES)));
typedef float half __attribute__((vector_size(2 * LANES)));
typedef float quarter __attribute__((vector_size(LANES)));

#define INLINE static inline __attribute__((always_inline))

INLINE vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INLINE void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
INLINE vec splat(float s) { return s - (vec){0}; }
INLINE vec keep(vec v, ivec mask) { return (vec)((ivec)v & mask); }
/* lanes not <= 0: positive or NaN, so that NaN propagates as through torch.relu and its backward */
INLINE ivec active(vec v) { return ~(v <= 0); }
INLINE vec relu(vec v) { return keep(v, active(v)); }

/* a mask of LANES lanes as LANES bits, lane i in bit i, and back */
INLINE uint16_t pack(ivec mask)
{
#ifdef __AVX512F__
    return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask);
#else
    uint16_t bits = 0;
    for (int i = 0; i < LANES; ++i)
        bits |= (uint16_t)((mask[i] & 1) << i);
    return bits;
#endif
}

INLINE ivec unpack(uint16_t bits)
{
    const ivec lane = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    return ((int32_t)bits & lane) != 0;
}

INLINE float hsum(vec v)
{
    half a, b;
    memcpy(&a, &v, sizeof a);
    memcpy(&b, (const char *)&v + sizeof a, sizeof b);
    a += b;
    quarter c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (const char *)&a + sizeof c, sizeof d);
    c += d;
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* acc[r][v] = init[v] + sum_k in[r * in_row + k * in_k] * w[k * w_row + v * LANES], for nv <= TILE_VECS vectors
 * (a compile-time constant after inlining, so the tile lives in registers) */
INLINE void tile(vec acc[][TILE_VECS], const float *in, int64_t in_row, int64_t in_k, const float *w, int64_t w_row,
                 int depth, const float *init, int init_row, const int nr, const int nv)
{
    for (int r = 0; r < nr; ++r)
        for (int v = 0; v < nv; ++v)
            acc[r][v] = init ? load(init + r * init_row + v * LANES) : splat(0.0f);
    for (int k = 0; k < depth; ++k) {
        vec wk[TILE_VECS];
        for (int v = 0; v < nv; ++v)
            wk[v] = load(w + k * w_row + v * LANES);
        for (int r = 0; r < nr; ++r) {
            const vec s = splat(in[r * in_row + k * in_k]);
            for (int v = 0; v < nv; ++v)
                acc[r][v] += s * wk[v];
        }
    }
}

/* v's bits rounded to bf16 (to nearest, ties to even; a NaN stays NaN), in the upper half of each lane */
INLINE uvec bf16_rounded(vec v)
{
    uvec bits = (uvec)v | ((uvec)(v != v) & 0x00400000u);
    return (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
}

/* rows x width floats to bf16, row-major */
static void to_bf16(const float *src, uint16_t *dst, int rows, int width)
{
    for (int64_t i = 0; i < (int64_t)rows * width; i += LANES) {
        const bf16vec packed = __builtin_convertvector(bf16_rounded(load(src + i)) >> 16, bf16vec);
        memcpy(dst + i, &packed, sizeof packed);
    }
}

/* rows (even) x width floats to bf16 row pairs: dst[r / 2][c] holds rows r and r + 1 of column c side by side */
static void to_bf16_row_pairs(const float *src, uint16_t *dst, int rows, int width)
{
    for (int r = 0; r < rows; r += 2)
        for (int c = 0; c < width; c += LANES) {
            const uvec pairs = bf16_rounded(load(src + r * width + c)) >> 16 |
                               bf16_rounded(load(src + (r + 1) * width + c));
            memcpy(dst + ((int64_t)r * width + 2 * c), &pairs, sizeof pairs);
        }
}

INLINE uint32_t load_pair(const uint16_t *p) { uint32_t pair; memcpy(&pair, p, sizeof pair); return pair; }

/* LANES columns of bf16 weight pairs, and acc + the products of a pair of bf16 inputs with them, per column */
#if BF16_HARDWARE
typedef __m512bh pairs_t;
INLINE pairs_t load_pairs(const uint16_t *p) { __m512i v; memcpy(&v, p, sizeof v); return (pairs_t)v; }
INLINE vec dot_pairs(vec acc, uint32_t pair, pairs_t w)
{
    return (vec)_mm512_dpbf16_ps((__m512)acc, (pairs_t)_mm512_set1_epi32((int)pair), w);
}
#else
typedef struct { vec low, high; } pairs_t;
INLINE pairs_t load_pairs(const uint16_t *p)
{
    uvec v;
    memcpy(&v, p, sizeof v);
    return (pairs_t){(vec)(v << 16), (vec)(v & 0xffff0000u)};
}
INLINE float bits_float(uint32_t bits) { float f; memcpy(&f, &bits, sizeof f); return f; }
INLINE vec dot_pairs(vec acc, uint32_t pair, pairs_t w)
{
    return acc + splat(bits_float(pair << 16)) * w.low + splat(bits_float(pair & 0xffff0000u)) * w.high;
}
#endif

/* tile() on bf16 operands, the depth taken in pairs: in[2 * (r * in_row + p * in_pair)] holds the pair p of row r,
 * w + p * w_row + 2 * v * LANES the pair p of LANES columns */
INLINE void tile_bf16(vec acc[][TILE_VECS], const uint16_t *in, int64_t in_row, int64_t in_pair, const uint16_t *w,
                      int64_t w_row, int pairs, const float *init, const int nr, const int nv)
{
    for (int r = 0; r < nr; ++r)
        for (int v = 0; v < nv; ++v)
            acc[r][v] = init ? load(init + v * LANES) : splat(0.0f);
    for (int p = 0; p < pairs; ++p) {
        pairs_t wp[TILE_VECS];
        for (int v = 0; v < nv; ++v)
            wp[v] = load_pairs(w + p * w_row + 2 * v * LANES);
        for (int r = 0; r < nr; ++r) {
            const uint32_t pair = load_pair(in + 2 * (r * in_row + p * in_pair));
            for (int v = 0; v < nv; ++v)
                acc[r][v] = dot_pairs(acc[r][v], pair, wp[v]);
        }
    }
}

typedef struct {
    int arity, h1, h2;
    const float *w1t, *b1, *w2t, *b2, *w3, *w2out;
    float b3;
    const uint16_t *w2_pairs, *w2out_pairs; /* non-null: bf16 products */
} net_t;

/* h[r] = relu(b1 + x[r] W1^T) for BLOCK_ROWS rows, rows from n on padded with x = 0 */
static void first_layer(const net_t *net, const float *x, int64_t n, float *h)
{
    for (int r = 0; r < BLOCK_ROWS; ++r)
        for (int c = 0; c < net->h1; c += LANES) {
            vec acc = load(net->b1 + c);
            for (int a = 0; a < net->arity; ++a)
                acc += splat(r < n ? x[r * net->arity + a] : 0.0f) * load(net->w1t + a * net->h1 + c);
            store(h + r * net->h1 + c, relu(acc));
        }
}

/* call(nv) for each block of up to TILE_VECS vectors of columns c of a layer of `width` units */
#define BY_COLUMN_BLOCKS(width, call)                                                                                  \
    for (int c = 0; c < (width); c += TILE_VECS * LANES) {                                                            \
        switch (((width) - c) / LANES) {                                                                               \
        case 1: call(1); break;                                                                                        \
        case 2: call(2); break;                                                                                        \
        case 3: call(3); break;                                                                                        \
        default: call(4); break;                                                                                       \
        }                                                                                                              \
    }

/* A thread's buffers: a block's h1 (and in bf16, row-major hb and as row pairs hp), G (bf16: row-major Gb, row pairs
 * Gp) and G1, its sums (float, laid out as `sums` below) and the thread's totals of them (double, so that sums over
 * millions of rows lose no more than torch's). Forward uses h and hb only. */
typedef struct {
    float *h, *G, *G1, *block;
    uint16_t *hb, *hp, *Gb, *Gp;
    double *total;
} scratch_t;

/* Second layer on a block: out[r] += relu(h2[r]) . w3 and, with `signs`, the bits of [h2[r] > 0] (forward), or
 * G[r] = g[r] * [h2[r] > 0] (g non-null) */
INLINE void second_layer_cols(const net_t *net, const scratch_t *t, int c, const float *g, float *out,
                              uint16_t *signs, const int nv)
{
    vec acc[TILE_ROWS][TILE_VECS];
    const int h1 = net->h1, h2 = net->h2;
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += TILE_ROWS) {
        if (net->w2_pairs)
            tile_bf16(acc, t->hb + r0 * h1, h1 / 2, 1, net->w2_pairs + 2 * c, 2 * h2, h1 / 2, net->b2 + c, TILE_ROWS,
                      nv);
        else
            tile(acc, t->h + r0 * h1, h1, 1, net->w2t + c, h2, h1, net->b2 + c, 0, TILE_ROWS, nv);
        for (int r = 0; r < TILE_ROWS; ++r) {
            if (g) {
                const vec gr = splat(g[r0 + r]);
                for (int v = 0; v < nv; ++v)
                    store(t->G + (r0 + r) * h2 + c + v * LANES, keep(gr, active(acc[r][v])));
            } else {
                vec part = relu(acc[r][0]) * load(net->w3 + c);
                for (int v = 1; v < nv; ++v)
                    part += relu(acc[r][v]) * load(net->w3 + c + v * LANES);
                out[r0 + r] += hsum(part);
                if (signs)
                    for (int v = 0; v < nv; ++v)
                        signs[(r0 + r) * (h2 / LANES) + c / LANES + v] = pack(active(acc[r][v]));
            }
        }
    }
}

/* the second layer on the block's h1 (in t->h, and in bf16 t->hb): see second_layer_cols */
static void second_layer(const net_t *net, const scratch_t *t, const float *g, float *out, uint16_t *signs)
{
#define SECOND_CALL(nv) second_layer_cols(net, t, c, g, out, signs, nv)
    BY_COLUMN_BLOCKS(net->h2, SECOND_CALL)
}

/* P = G^T h over the block (P is h2 x h1) */
INLINE void block_p_cols(const net_t *net, const scratch_t *t, float *P, int c, const int nv)
{
    vec acc[P_TILE_ROWS][TILE_VECS];
    const int h1 = net->h1, h2 = net->h2;
    for (int j0 = 0; j0 < h2; j0 += P_TILE_ROWS) {
        if (net->w2_pairs)
            tile_bf16(acc, t->Gp + 2 * j0, 1, h2, t->hp + 2 * c, 2 * h1, BLOCK_ROWS / 2, NULL, P_TILE_ROWS, nv);
        else
            tile(acc, t->G + j0, 1, h2, t->h + c, h1, BLOCK_ROWS, NULL, 0, P_TILE_ROWS, nv);
        for (int r = 0; r < P_TILE_ROWS; ++r)
            for (int v = 0; v < nv; ++v)
                store(P + (j0 + r) * h1 + c + v * LANES, acc[r][v]);
    }
}

/* G1 = (G @ w2out) * [h > 0] over the block (G1 is BLOCK_ROWS x h1) */
INLINE void below_cols(const net_t *net, const scratch_t *t, int c, const int nv)
{
    vec acc[TILE_ROWS][TILE_VECS];
    const int h1 = net->h1, h2 = net->h2;
    for (int r0 = 0; r0 < BLOCK_ROWS; r0 += TILE_ROWS) {
        if (net->w2_pairs)
            tile_bf16(acc, t->Gb + r0 * h2, h2 / 2, 1, net->w2out_pairs + 2 * c, 2 * h1, h2 / 2, NULL, TILE_ROWS, nv);
        else
            tile(acc, t->G + r0 * h2, h2, 1, net->w2out + c, h1, h2, NULL, 0, TILE_ROWS, nv);
        for (int r = 0; r < TILE_ROWS; ++r)
            for (int v = 0; v < nv; ++v) {
                const int64_t at = (r0 + r) * h1 + c + v * LANES;
                store(t->G1 + at, keep(acc[r][v], active(load(t->h + at))));
            }
    }
}

/* G[r] = g[r] * [h2[r] > 0] from the signs the forward pass kept */
static void gate_by_signs(const net_t *net, const uint16_t *signs, const float *g, int64_t n, float *G)
{
    const int words = net->h2 / LANES;
    for (int r = 0; r < BLOCK_ROWS; ++r)
        for (int w = 0; w < words; ++w)
            store(G + r * net->h2 + w * LANES, keep(splat(g[r]), unpack(r < n ? signs[r * words + w] : 0)));
}

/* One block of backward: its input gradient and, with sum_size, its sums added to the thread's totals; the signs of
 * h2 are read from `signs` or, when it is null, recomputed */
static void backward_block(const net_t *net, const float *x, const float *g_in, const uint16_t *signs, int64_t n,
                           float *grad_x, int64_t sum_size, scratch_t *t)
{
    const int h1 = net->h1, h2 = net->h2, arity = net->arity, bf16 = net->w2_pairs != NULL;
    float g[BLOCK_ROWS];
    for (int r = 0; r < BLOCK_ROWS; ++r)
        g[r] = r < n ? g_in[r] : 0.0f;
    first_layer(net, x, n, t->h);
    if (signs) {
        gate_by_signs(net, signs, g, n, t->G);
    } else {
        if (bf16)
            to_bf16(t->h, t->hb, BLOCK_ROWS, h1);
        second_layer(net, t, g, NULL, NULL);
    }
    if (bf16) {
        to_bf16(t->G, t->Gb, BLOCK_ROWS, h2);
        if (sum_size) {
            to_bf16_row_pairs(t->h, t->hp, BLOCK_ROWS, h1);
            to_bf16_row_pairs(t->G, t->Gp, BLOCK_ROWS, h2);
        }
    }
    float *P = t->block, *s = P + (int64_t)h2 * h1, *w1 = s + h2, *b1 = w1 + (int64_t)arity * h1, *g_sum = b1 + h1;
    if (sum_size) {
#define P_CALL(nv) block_p_cols(net, t, P, c, nv)
        BY_COLUMN_BLOCKS(h1, P_CALL)
        for (int j = 0; j < h2; j += LANES) {
            vec acc = splat(0.0f);
            for (int r = 0; r < BLOCK_ROWS; ++r)
                acc += load(t->G + r * h2 + j);
            store(s + j, acc);
        }
        *g_sum = 0.0f;
        for (int r = 0; r < n; ++r)
            *g_sum += g[r];
    }
#define BELOW_CALL(nv) below_cols(net, t, c, nv)
    BY_COLUMN_BLOCKS(h1, BELOW_CALL)
    if (sum_size) {
        for (int c = 0; c < h1; c += LANES) {
            vec db = splat(0.0f);
            for (int r = 0; r < n; ++r)
                db += load(t->G1 + r * h1 + c);
            store(b1 + c, db);
            for (int a = 0; a < arity; ++a) {
                vec dw = splat(0.0f);
                for (int r = 0; r < n; ++r)
                    dw += splat(x[r * arity + a]) * load(t->G1 + r * h1 + c);
                store(w1 + a * h1 + c, dw);
            }
        }
        for (int64_t i = 0; i < sum_size; ++i)
            t->total[i] += t->block[i];
    }
    if (grad_x)
        for (int r = 0; r < n; ++r)
            for (int a = 0; a < arity; ++a) {
                vec acc = splat(0.0f);
                for (int c = 0; c < h1; c += LANES)
                    acc += load(t->G1 + r * h1 + c) * load(net->w1t + a * h1 + c);
                grad_x[r * arity + a] = hsum(acc);
            }
}

/* Whether every thread of the team got its buffers; called by all of them, it records a failure in `failed` */
static int team_allocated(int allocated, int *failed)
{
    if (!allocated) {
#pragma omp atomic write
        *failed = 1;
    }
#pragma omp barrier
    int any_failed;
#pragma omp atomic read
    any_failed = *failed;
    return !any_failed;
}

/* 64-byte aligned memory for `floats` floats and then, with bf16 products, `halves` bf16 values; NULL if out of
 * memory */
static float *block_memory(int64_t floats, int64_t halves, int bf16)
{
    const size_t bytes = sizeof(float) * floats + (bf16 ? sizeof(uint16_t) * halves : 0);
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

/* Whether the bf16 products run on AVX512-BF16's vdpbf16ps (1) or on their float32 emulation (0) */
int inner_bf16_hardware(void) { return BF16_HARDWARE; }

/* Cell types: the rows come grouped by type, type_rows[k] rows of type k after those of the types before it, and
 * every weight array holds one net per type, one after the other (b3: one float per type). A block never mixes types. */
typedef struct {
    int types;
    const int64_t *type_rows;
    int64_t blocks, first_block[]; /* first_block[k]: type k's first block; first_block[types] = blocks */
} typed_blocks_t;

static typed_blocks_t *typed_blocks(int types, const int64_t *type_rows)
{
    typed_blocks_t *b = malloc(sizeof(typed_blocks_t) + sizeof(int64_t) * (types + 1));
    if (!b)
        return NULL;
    b->types = types;
    b->type_rows = type_rows;
    b->first_block[0] = 0;
    for (int k = 0; k < types; ++k)
        b->first_block[k + 1] = b->first_block[k] + (type_rows[k] + BLOCK_ROWS - 1) / BLOCK_ROWS;
    b->blocks = b->first_block[types];
    return b;
}

/* block `block`'s type, its first row and its number of rows */
static int locate(const typed_blocks_t *b, int64_t block, int64_t *r0, int64_t *n)
{
    int k = 0;
    int64_t start = 0;
    while (block >= b->first_block[k + 1])
        start += b->type_rows[k++];
    *r0 = start + (block - b->first_block[k]) * BLOCK_ROWS;
    const int64_t left = start + b->type_rows[k] - *r0;
    *n = left < BLOCK_ROWS ? left : BLOCK_ROWS;
    return k;
}

/* type k's net from the stacked weights of `all` (type 0's) */
static net_t type_net(const net_t *all, const float *b3, int k)
{
    const int64_t a = all->arity, h1 = all->h1, h2 = all->h2;
    net_t net = *all;
    net.w1t += k * a * h1;
    net.b1 += k * h1;
    net.w2t += k * h1 * h2;
    net.b2 += k * h2;
    if (net.w3)
        net.w3 += k * h2;
    if (net.w2out)
        net.w2out += k * h2 * h1;
    if (net.w2_pairs)
        net.w2_pairs += k * h1 * h2;
    if (net.w2out_pairs)
        net.w2out_pairs += k * h2 * h1;
    net.b3 = b3 ? b3[k] : 0.0f;
    return net;
}

/* Both functions return 0, or 1 when a thread's buffers could not be allocated (then nothing was computed).
 * signs: (rows, h2 / 16) words of bits [h2 > 0], written by the forward pass when non-null, and read by the
 * backward pass instead of recomputing h2 when non-null. w2_pairs (and w2out_pairs for backward): the bf16 pairs of
 * the weights for bf16 products (see the top of the file), or null for float32 products. types and type_rows: the
 * cell types (see typed_blocks_t; 1 and {rows} for one net). */
int inner_forward(const float *x, float *out, uint16_t *signs, int arity, int h1, int h2,
                  const float *w1t, const float *b1, const float *w2t, const float *b2, const float *w3, const float *b3,
                  const uint16_t *w2_pairs, int types, const int64_t *type_rows, int threads)
{
    const net_t all = {arity, h1, h2, w1t, b1, w2t, b2, w3, NULL, 0.0f, w2_pairs, NULL};
    const int64_t words = h2 / LANES;
    const int bf16 = w2_pairs != NULL;
    typed_blocks_t *grouped = typed_blocks(types, type_rows);
    if (!grouped)
        return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *h = block_memory((int64_t)BLOCK_ROWS * h1, (int64_t)BLOCK_ROWS * h1, bf16);
        const scratch_t t = {.h = h, .hb = bf16 && h ? (uint16_t *)(h + BLOCK_ROWS * h1) : NULL};
        uint16_t *block_signs = signs ? malloc(sizeof(uint16_t) * BLOCK_ROWS * words) : NULL;
        float block_out[BLOCK_ROWS];
        if (team_allocated(h && (block_signs || !signs), &failed))
#pragma omp for schedule(static)
            for (int64_t b = 0; b < grouped->blocks; ++b) {
                int64_t r0, n;
                const net_t net = type_net(&all, b3, locate(grouped, b, &r0, &n));
                for (int r = 0; r < BLOCK_ROWS; ++r)
                    block_out[r] = net.b3;
                first_layer(&net, x + r0 * arity, n, h);
                if (bf16)
                    to_bf16(h, t.hb, BLOCK_ROWS, h1);
                second_layer(&net, &t, NULL, block_out, block_signs);
                memcpy(out + r0, block_out, sizeof(float) * n);
                if (signs)
                    memcpy(signs + r0 * words, block_signs, sizeof(uint16_t) * n * words);
            }
        free(h);
        free(block_signs);
    }
    free(grouped);
    return failed;
}

/* sums (double, one set per type): P (h2 x h1), s (h2), dW1^T (arity x h1), db1 (h1), sum g (1), zeroed by the
 * caller; null to skip */
int inner_backward(const float *x, const float *grad_out, const uint16_t *signs, int arity, int h1, int h2,
                  const float *w1t, const float *b1, const float *w2t, const float *b2, const float *w2out,
                  const uint16_t *w2_pairs, const uint16_t *w2out_pairs, float *grad_x, double *sums, int types,
                  const int64_t *type_rows, int threads)
{
    const net_t all = {arity, h1, h2, w1t, b1, w2t, b2, NULL, w2out, 0.0f, w2_pairs, w2out_pairs};
    const int64_t sum_size = sums ? (int64_t)h2 * h1 + h2 + (int64_t)arity * h1 + h1 + 1 : 0;
    const int bf16 = w2_pairs != NULL;
    typed_blocks_t *grouped = typed_blocks(types, type_rows);
    if (!grouped)
        return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        const int64_t floats = (int64_t)BLOCK_ROWS * (2 * h1 + h2) + sum_size + LANES;
        float *memory = block_memory(floats, (int64_t)BLOCK_ROWS * 2 * (h1 + h2), bf16);
        double *total = calloc(sum_size * types + 1, sizeof(double));
        if (team_allocated(memory && total, &failed)) {
            uint16_t *halves = bf16 ? (uint16_t *)(memory + floats) : NULL;
            scratch_t t = {.h = memory, .G = memory + BLOCK_ROWS * h1, .G1 = memory + BLOCK_ROWS * (h1 + h2),
                           .block = memory + BLOCK_ROWS * (2 * h1 + h2)};
            if (bf16) {
                t.hb = halves;
                t.hp = t.hb + BLOCK_ROWS * h1;
                t.Gb = t.hp + BLOCK_ROWS * h1;
                t.Gp = t.Gb + BLOCK_ROWS * h2;
            }
#pragma omp for schedule(static)
            for (int64_t b = 0; b < grouped->blocks; ++b) {
                int64_t r0, n;
                const int k = locate(grouped, b, &r0, &n);
                const net_t net = type_net(&all, NULL, k);
                t.total = total + k * sum_size;
                backward_block(&net, x + r0 * arity, grad_out + r0, signs ? signs + r0 * (h2 / LANES) : NULL, n,
                               grad_x ? grad_x + r0 * arity : NULL, sum_size, &t);
            }
#pragma omp critical
            for (int64_t i = 0; i < sum_size * types; ++i)
                sums[i] += total[i];
        }
        free(memory);
        free(total);
    }
    free(grouped);
    return failed;
}
