/* The quadrature entropy estimate of sb3_gmm.entropy.quadrature and its first derivative, in one call.
 *
 * The same arithmetic as quadrature._fused_forward / _fused_backward (read those for the maths). Eager PyTorch pays
 * a few microseconds per op and the fused torch path is ~90 of them, so at RL minibatch sizes that bookkeeping, not
 * the arithmetic, was the cost; here the whole forward and backward is one call.
 *
 * The batch is processed in blocks of BLOCK elements. The O(K^2 D) set-up and chain rule run per element; the
 * O(K^2 n D) part runs with the block's elements innermost, so every hot loop is BLOCK long and the compiler
 * vectorises it (exp and log included, through glibc's vector math library; hence -ffast-math, which is safe here:
 * every input is checked finite and every distance is capped). Vectorising over the points instead (n = 36 in 1-D)
 * left ~100 ns of loop start-up per (element, component pair), most of the time at K = 4.
 *
 * Compiled twice, with -DREAL=float and -DREAL=double (native.py builds and loads it; no Python headers, no torch
 * headers). Returns 0, or 1 when memory for the workspace could not be allocated.
 */
/* Type-generic exp and log: the float build must call expf / logf (log of a float would otherwise run in double). */
#include <tgmath.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL double
#endif

/* Whether x is finite (and, with positive, > 0), read from its bits: -ffast-math lets the compiler assume that no
 * value is NaN or inf, so isfinite() and comparisons with NaN cannot be trusted here. */
static int usable(REAL x, int positive) {
    if (sizeof(REAL) == 4) {
        uint32_t bits;
        memcpy(&bits, &x, sizeof bits);
        if ((bits & 0x7f800000u) == 0x7f800000u) return 0;
        return !positive || (!(bits >> 31) && (bits & 0x7fffffffu) != 0);
    }
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) return 0;
    return !positive || (!(bits >> 63) && (bits & 0x7fffffffffffffffull) != 0);
}

static REAL not_a_number(void) {
    if (sizeof(REAL) == 4) {
        const uint32_t bits = 0x7fc00000u;
        float x;
        memcpy(&x, &bits, sizeof x);
        return (REAL)x;
    }
    const uint64_t bits = 0x7ff8000000000000ull;
    double x;
    memcpy(&x, &bits, sizeof x);
    return (REAL)x;
}

/* Whether one element's mixture parameters are all usable: log weights [K]; means, stds (> 0), log stds [K D]. */
static int mixture_usable(const REAL *lw, const REAL *mu, const REAL *s, const REAL *ls, int64_t K, int64_t KD) {
    int ok = 1;
    for (int64_t k = 0; k < K; ++k) ok &= usable(lw[k], 0);
    for (int64_t f = 0; f < KD; ++f) ok &= usable(mu[f], 0) & usable(s[f], 1) & usable(ls[f], 0);
    return ok;
}

static void fill_nan(REAL *values, int64_t n) {
    for (int64_t f = 0; f < n; ++f) values[f] = not_a_number();
}

/* A distance in std units capped at +-cap (sb3_gmm.mixture.max_scaled_distance): beyond it every density is 0. */
static inline REAL cap_distance(REAL z, REAL cap) { return z > cap ? cap : (z < -cap ? -cap : z); }

/* exp of an exponent that may lie far below any that matters (a node many stds from a component): raised to a floor
 * whose exp is still far below float resolution next to the terms it is summed with (1e-35 in float, 1e-304 in
 * double, against terms of order 1), but inside the range where the vectorised exp (glibc's libmvec) stays on its
 * fast path: below it, every vector with one such lane is redone lane by lane by the scalar exp. */
static inline REAL exp_floored(REAL x) {
    const REAL floor = sizeof(REAL) == 4 ? (REAL)-80 : (REAL)-700;
    return exp(x < floor ? floor : x);
}

/* Entropy of a D-dimensional Gaussian with unit std: D / 2 * log(2 pi e). */
#define HALF_LOG_2PI_E 1.4189385332046727

/*
 * Inputs: log_weights [B, K], means / stds / log_stds [B, K, D], each C-contiguous per batch element, element b
 *   starting batch_strides[input] * b elements after the first (0 for an input shared by the whole batch);
 *   points: the standard-normal points of component i start at points + i * point_component_stride, as [n, D]
 *           (0: shared by every component);
 *   point_weights [n].
 * Outputs: value [B]; when grad_log_weights is not NULL, the gradient of value[b] w.r.t. the inputs of element b
 * (an incoming gradient of one): [K] log weights, [K, D] means, [K, D] stds, [K] log stds (they enter only through
 * their sum over D), each starting grad_batch_stride * b elements after its pointer (one buffer for all four, so
 * that the backward scales them with one multiplication).
 */
#define BLOCK 64

int sb3_gmm_quadrature_entropy(int64_t n_batch, int64_t n_components, int64_t dim, int64_t n_points,
                               const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                               const int64_t *batch_strides, const REAL *points, int64_t point_component_stride,
                               const REAL *point_weights,
                               int32_t responsibility_entropy, REAL distance_cap, REAL *value,
                               REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds, REAL *grad_log_stds,
                               int64_t grad_batch_stride) {
    const int64_t K = n_components, D = dim, n = n_points;
    const int64_t F = 2 * D + 1; /* coefficients per pair: linear [D], quadratic [D], constant */
    const int with_gradient = grad_log_weights != NULL;
    /* Per element: per-component estimates and coefficient gradients [K + K K F]. Per block, element innermost:
     * coefficients and their gradients [K, K, F, BLOCK], exponents and exponentials [K, BLOCK], per-point
     * scratch [4, BLOCK], per-component sums and weights [2, K, BLOCK], validity [BLOCK]; one point [2 D]. */
    const int64_t size = K + K * K * F + 2 * K * K * F * BLOCK + 2 * K * BLOCK + 4 * BLOCK + 2 * K * BLOCK + BLOCK +
                         2 * D;
    REAL *work = (REAL *)malloc((size_t)size * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *restrict per_component = work;                             /* [K] of one element */
    REAL *restrict grad_coef = per_component + K;                    /* [K, K, F] of one element */
    REAL *restrict block_coef = grad_coef + K * K * F;               /* [K, K, F, BLOCK] */
    REAL *restrict block_grad = block_coef + K * K * F * BLOCK;      /* [K, K, F, BLOCK] */
    REAL *restrict exponent = block_grad + K * K * F * BLOCK;        /* [K, BLOCK] */
    REAL *restrict exponential = exponent + K * BLOCK;               /* [K, BLOCK] */
    REAL *restrict shift = exponential + K * BLOCK;                  /* [BLOCK] */
    REAL *restrict normaliser = shift + BLOCK;                       /* [BLOCK] */
    REAL *restrict mean_exponent = normaliser + BLOCK;               /* [BLOCK] */
    REAL *restrict point_scale = mean_exponent + BLOCK;              /* [BLOCK] */
    REAL *restrict averaged = point_scale + BLOCK;                   /* [K, BLOCK] */
    REAL *restrict weights = averaged + K * BLOCK;                   /* [K, BLOCK] */
    REAL *restrict valid = weights + K * BLOCK;                      /* [BLOCK]: 1 or 0 */
    REAL *restrict point = valid + BLOCK;                            /* [2, D]: eps and eps^2 of one point */

    for (int64_t start = 0; start < n_batch; start += BLOCK) {
        const int64_t nb = n_batch - start < BLOCK ? n_batch - start : BLOCK;
        /* Set-up per element: log w_j + Delta_ij(eps) = c_ij + sum_d lin_ijd eps_d + quad_ijd eps_d^2
         * (quadrature._exponent_form), stored element-innermost. */
        for (int64_t e = 0; e < nb; ++e) {
            const int64_t b = start + e;
            const REAL *lw = log_weights + b * batch_strides[0], *mu = means + b * batch_strides[1];
            const REAL *s = stds + b * batch_strides[2], *ls = log_stds + b * batch_strides[3];
            /* NaN or inf in (callers that switched validation off) gives NaN out, as the torch path does, instead
             * of whatever the fast-math arithmetic would make of it. The element is computed on harmless inputs. */
            const int ok = mixture_usable(lw, mu, s, ls, K, K * D);
            valid[e] = (REAL)ok;
            for (int64_t i = 0; i < K; ++i) {
                weights[i * BLOCK + e] = ok ? exp(lw[i]) : (REAL)1 / (REAL)K;
                for (int64_t j = 0; j < K; ++j)
                    for (int64_t f = 0; f < F; ++f) block_coef[((i * K + j) * F + f) * BLOCK + e] = 0;
            }
            if (!ok) continue;
            for (int64_t i = 0; i < K; ++i) {
                REAL sum_log_std_i = 0;
                for (int64_t d = 0; d < D; ++d) sum_log_std_i += ls[i * D + d];
                for (int64_t j = 0; j < K; ++j) {
                    REAL constant = sum_log_std_i + lw[j];
                    for (int64_t d = 0; d < D; ++d) {
                        const REAL inv_std_j = 1 / s[j * D + d];
                        REAL z = (mu[i * D + d] - mu[j * D + d]) * inv_std_j;
                        z = cap_distance(z, distance_cap);
                        const REAL r = s[i * D + d] * inv_std_j;
                        block_coef[((i * K + j) * F + d) * BLOCK + e] = -z * r;
                        block_coef[((i * K + j) * F + D + d) * BLOCK + e] = (REAL)0.5 - (REAL)0.5 * r * r;
                        constant -= ls[j * D + d] + (REAL)0.5 * z * z;
                    }
                    block_coef[((i * K + j) * F + 2 * D) * BLOCK + e] = constant;
                }
            }
        }
        if (with_gradient)
            for (int64_t f = 0; f < K * K * F * BLOCK; ++f) block_grad[f] = 0;
        /* The points, element innermost: every loop below runs over the block. */
        for (int64_t i = 0; i < K; ++i) {
            REAL *restrict sum_i = averaged + i * BLOCK;
            for (int64_t e = 0; e < nb; ++e) sum_i[e] = 0;
            for (int64_t p = 0; p < n; ++p) {
                const REAL *eps = points + i * point_component_stride + p * D;
                for (int64_t d = 0; d < D; ++d) {
                    point[d] = eps[d];
                    point[D + d] = eps[d] * eps[d];
                }
                const REAL v = point_weights[p];
                for (int64_t j = 0; j < K; ++j) {
                    const REAL *c = block_coef + (i * K + j) * F * BLOCK;
                    REAL *restrict x = exponent + j * BLOCK;
                    const REAL *constant = c + 2 * D * BLOCK;
                    for (int64_t e = 0; e < nb; ++e) x[e] = constant[e];
                    for (int64_t d = 0; d < D; ++d) {
                        const REAL *lin = c + d * BLOCK, *quad = c + (D + d) * BLOCK;
                        const REAL eps_d = point[d], eps_d2 = point[D + d];
                        for (int64_t e = 0; e < nb; ++e) x[e] += lin[e] * eps_d + quad[e] * eps_d2;
                    }
                    if (j == 0)
                        for (int64_t e = 0; e < nb; ++e) shift[e] = x[e];
                    else
                        for (int64_t e = 0; e < nb; ++e) shift[e] = x[e] > shift[e] ? x[e] : shift[e];
                }
                for (int64_t e = 0; e < nb; ++e) normaliser[e] = mean_exponent[e] = 0;
                for (int64_t j = 0; j < K; ++j) {
                    REAL *restrict x = exponent + j * BLOCK, *restrict ex = exponential + j * BLOCK;
                    for (int64_t e = 0; e < nb; ++e) {
                        x[e] -= shift[e];
                        ex[e] = exp(x[e]);
                        normaliser[e] += ex[e];
                        mean_exponent[e] += x[e] * ex[e];
                    }
                }
                if (responsibility_entropy)
                    for (int64_t e = 0; e < nb; ++e) {
                        mean_exponent[e] /= normaliser[e];
                        sum_i[e] += v * (log(normaliser[e]) - mean_exponent[e]);
                    }
                else
                    for (int64_t e = 0; e < nb; ++e) sum_i[e] += v * (shift[e] + log(normaliser[e]));
                if (!with_gradient) continue;
                /* d value / d exponent_ij = w_i v r_ij (x_ij - mean) for the responsibility entropy, -w_i v r_ij for
                 * the log responsibility (w_i is applied after the sum over points); onto the coefficients through
                 * the features [eps, eps^2, 1]. */
                for (int64_t e = 0; e < nb; ++e) point_scale[e] = v / normaliser[e];
                for (int64_t j = 0; j < K; ++j) {
                    REAL *restrict x = exponent + j * BLOCK;
                    const REAL *ex = exponential + j * BLOCK;
                    REAL *g = block_grad + (i * K + j) * F * BLOCK;
                    REAL *restrict g_constant = g + 2 * D * BLOCK;
                    if (responsibility_entropy)
                        for (int64_t e = 0; e < nb; ++e) {
                            x[e] = ex[e] * point_scale[e] * (x[e] - mean_exponent[e]);
                            g_constant[e] += x[e];
                        }
                    else
                        for (int64_t e = 0; e < nb; ++e) {
                            x[e] = -ex[e] * point_scale[e];
                            g_constant[e] += x[e];
                        }
                    for (int64_t d = 0; d < D; ++d) {
                        REAL *restrict g_lin = g + d * BLOCK, *restrict g_quad = g + (D + d) * BLOCK;
                        const REAL eps_d = point[d], eps_d2 = point[D + d];
                        for (int64_t e = 0; e < nb; ++e) {
                            g_lin[e] += x[e] * eps_d;
                            g_quad[e] += x[e] * eps_d2;
                        }
                    }
                }
            }
        }
        /* Per element: the estimate, then the chain rule of quadrature._fused_backward (incoming gradient one). */
        for (int64_t e = 0; e < nb; ++e) {
            const int64_t b = start + e;
            if (valid[e] == 0) {
                value[b] = not_a_number();
                if (with_gradient) {
                    fill_nan(grad_log_weights + b * grad_batch_stride, K);
                    fill_nan(grad_means + b * grad_batch_stride, K * D);
                    fill_nan(grad_stds + b * grad_batch_stride, K * D);
                    fill_nan(grad_log_stds + b * grad_batch_stride, K);
                }
                continue;
            }
            const REAL *lw = log_weights + b * batch_strides[0], *mu = means + b * batch_strides[1];
            const REAL *s = stds + b * batch_strides[2], *ls = log_stds + b * batch_strides[3];
            REAL total = 0;
            for (int64_t i = 0; i < K; ++i) {
                REAL gaussian = HALF_LOG_2PI_E * (REAL)D;
                for (int64_t d = 0; d < D; ++d) gaussian += ls[i * D + d];
                per_component[i] = responsibility_entropy ? gaussian - lw[i] - averaged[i * BLOCK + e]
                                                          : gaussian - averaged[i * BLOCK + e];
                total += weights[i * BLOCK + e] * per_component[i];
            }
            value[b] = total;
            if (!with_gradient) continue;
            REAL *g_lw = grad_log_weights + b * grad_batch_stride, *g_mu = grad_means + b * grad_batch_stride;
            REAL *g_s = grad_stds + b * grad_batch_stride, *g_ls = grad_log_stds + b * grad_batch_stride;
            /* The block's coefficient gradients of this element, scaled by w_i. */
            for (int64_t i = 0; i < K; ++i)
                for (int64_t f = 0; f < K * F; ++f)
                    grad_coef[i * K * F + f] = weights[i * BLOCK + e] * block_grad[(i * K * F + f) * BLOCK + e];
            for (int64_t k = 0; k < K; ++k) {
                REAL into = 0, out_of = 0; /* sum_i' grad_constant_{i' k}, sum_j grad_constant_{k j} */
                for (int64_t other = 0; other < K; ++other) {
                    into += grad_coef[(other * K + k) * F + 2 * D];
                    out_of += grad_coef[(k * K + other) * F + 2 * D];
                }
                const REAL w = weights[k * BLOCK + e];
                g_lw[k] = w * per_component[k] + into - (responsibility_entropy ? w : 0);
                g_ls[k] = w + out_of - into;
                for (int64_t d = 0; d < D; ++d) g_mu[k * D + d] = g_s[k * D + d] = 0;
            }
            for (int64_t i = 0; i < K; ++i)
                for (int64_t j = 0; j < K; ++j) {
                    const REAL *gc = grad_coef + (i * K + j) * F;
                    const REAL grad_constant = gc[2 * D];
                    for (int64_t d = 0; d < D; ++d) {
                        const REAL inv_std_j = 1 / s[j * D + d];
                        REAL z = (mu[i * D + d] - mu[j * D + d]) * inv_std_j;
                        z = cap_distance(z, distance_cap);
                        const REAL r = s[i * D + d] * inv_std_j;
                        const REAL grad_scaled = -grad_constant * z - gc[d] * r;
                        const REAL grad_ratio = -gc[d] * z - gc[D + d] * r;
                        const REAL grad_diff = grad_scaled * inv_std_j;
                        g_mu[i * D + d] += grad_diff;
                        g_mu[j * D + d] -= grad_diff;
                        g_s[i * D + d] += grad_ratio * inv_std_j;
                        g_s[j * D + d] -= (grad_ratio * r + grad_scaled * z) * inv_std_j;
                    }
                }
        }
    }
    free(work);
    return 0;
}

/* log p(x) of a diagonal Gaussian mixture (sb3_gmm.mixture.mixture_log_prob) and its first derivative, in one call.
 *
 * Inputs: x [B, D], log_weights [B, K], means / stds / log_stds [B, K, D], each C-contiguous per batch element,
 * element b starting batch_strides[input] * b elements after the first (0: shared by the whole batch). stds and
 * log_stds are separate inputs, as in the torch formula (log_stds only through the normaliser).
 * Outputs: value [B]; when grad_x is not NULL, the gradient of value[b] w.r.t. the inputs of element b: [D] x, [K]
 * log weights, [K, D] means, stds and log stds, each starting grad_batch_stride * b elements after its pointer.
 * Distances in std units are capped at distance_cap (there every density is 0 in any float format anyway).
 * Returns 0, or 1 when memory for the workspace could not be allocated.
 */
int sb3_gmm_mixture_log_prob(int64_t n_batch, int64_t n_components, int64_t dim, const REAL *x,
                             const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                             const int64_t *batch_strides, REAL distance_cap, REAL *value, REAL *grad_x,
                             REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds, REAL *grad_log_stds,
                             int64_t grad_batch_stride) {
    const int64_t K = n_components, D = dim;
    const int with_gradient = grad_x != NULL;
    REAL *work = (REAL *)malloc((size_t)(K + K * D) * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *restrict joint = work;     /* [K]: log w_k + log N_k(x), then responsibilities */
    REAL *restrict scaled = work + K; /* [K, D]: (x - mu) / s */
    const REAL half_log_2pi = (REAL)0.91893853320467274;
    for (int64_t b = 0; b < n_batch; ++b) {
        const REAL *xb = x + b * batch_strides[0], *lw = log_weights + b * batch_strides[1];
        const REAL *mu = means + b * batch_strides[2], *s = stds + b * batch_strides[3];
        const REAL *ls = log_stds + b * batch_strides[4];
        int ok = mixture_usable(lw, mu, s, ls, K, K * D);
        for (int64_t d = 0; d < D; ++d) ok &= usable(xb[d], 0);
        if (!ok) {
            value[b] = not_a_number();
            if (with_gradient) {
                fill_nan(grad_x + b * grad_batch_stride, D);
                fill_nan(grad_log_weights + b * grad_batch_stride, K);
                fill_nan(grad_means + b * grad_batch_stride, K * D);
                fill_nan(grad_stds + b * grad_batch_stride, K * D);
                fill_nan(grad_log_stds + b * grad_batch_stride, K * D);
            }
            continue;
        }
        REAL shift = 0;
        for (int64_t k = 0; k < K; ++k) {
            REAL total = lw[k];
            for (int64_t d = 0; d < D; ++d) {
                REAL z = (xb[d] - mu[k * D + d]) / s[k * D + d];
                z = cap_distance(z, distance_cap);
                scaled[k * D + d] = z;
                total -= ls[k * D + d] + half_log_2pi + (REAL)0.5 * z * z;
            }
            joint[k] = total;
            shift = (k == 0 || total > shift) ? total : shift;
        }
        REAL normaliser = 0;
        for (int64_t k = 0; k < K; ++k) {
            joint[k] = exp(joint[k] - shift);
            normaliser += joint[k];
        }
        value[b] = shift + log(normaliser);
        if (!with_gradient) continue;
        REAL *g_x = grad_x + b * grad_batch_stride, *g_lw = grad_log_weights + b * grad_batch_stride;
        REAL *g_mu = grad_means + b * grad_batch_stride, *g_s = grad_stds + b * grad_batch_stride;
        REAL *g_ls = grad_log_stds + b * grad_batch_stride;
        for (int64_t d = 0; d < D; ++d) g_x[d] = 0;
        for (int64_t k = 0; k < K; ++k) {
            const REAL r = joint[k] / normaliser; /* the responsibility of component k at x */
            g_lw[k] = r;
            for (int64_t d = 0; d < D; ++d) {
                const REAL z = scaled[k * D + d], inv_std = 1 / s[k * D + d];
                g_mu[k * D + d] = r * z * inv_std;
                g_s[k * D + d] = r * z * z * inv_std;
                g_ls[k * D + d] = -r;
                g_x[d] -= r * z * inv_std;
            }
        }
    }
    free(work);
    return 0;
}

/* An unsigned integer whose order is x's (-0 before +0, which changes no sum): the union rule's merge compares
 * these, as integer compares and selects have a cycle of latency where float ones have several. */
static inline uint64_t sort_key(REAL x) {
    if (sizeof(REAL) == 4) {
        uint32_t bits;
        memcpy(&bits, &x, sizeof bits);
        return bits ^ ((uint32_t)((int32_t)bits >> 31) | 0x80000000u);
    }
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits ^ ((uint64_t)((int64_t)bits >> 63) | 0x8000000000000000ull);
}

static inline REAL key_value(uint64_t key) {
    if (sizeof(REAL) == 4) {
        const uint32_t low = (uint32_t)key, bits = low ^ ((low >> 31) ? 0x80000000u : 0xffffffffu);
        float x;
        memcpy(&x, &bits, sizeof x);
        return (REAL)x;
    }
    const uint64_t bits = key ^ ((key >> 63) ? 0x8000000000000000ull : 0xffffffffffffffffull);
    double x;
    memcpy(&x, &bits, sizeof x);
    return (REAL)x;
}

/* Merge steps on keys, ties first-run first (so the order is (key, run, position)), with the keys' node indices
 * where those are not packed into the keys (with_index). A front chain takes the smaller of the heads key[i] and
 * key[j] into out[o], a back chain the larger of the tails. A random step mispredicts a branch half the time, so
 * these are branch-free (the index's select is a mask: gcc turns ?: on several values back into branches), and
 * they do not check for an exhausted run: callers run only as many as no run can run out in. */
#define MERGE_FRONT_STEP(i, j, o)                                                                                    \
    do {                                                                                                             \
        const uint64_t head_i = key[i], head_j = key[j];                                                             \
        const int64_t take_j = head_j < head_i;                                                                      \
        out_key[o] = head_j < head_i ? head_j : head_i;                                                              \
        if (with_index) out_index[o] = index[i + ((j - i) & -take_j)];                                               \
        o += 1;                                                                                                      \
        i += 1 - take_j;                                                                                             \
        j += take_j;                                                                                                 \
    } while (0)
#define MERGE_BACK_STEP(i, j, o)                                                                                     \
    do {                                                                                                             \
        const uint64_t tail_i = key[i], tail_j = key[j];                                                             \
        const int64_t take_i = tail_i > tail_j;                                                                      \
        out_key[o] = tail_i > tail_j ? tail_i : tail_j;                                                              \
        if (with_index) out_index[o] = index[j + ((i - j) & -take_i)];                                               \
        o -= 1;                                                                                                      \
        i -= take_i;                                                                                                 \
        j -= 1 - take_i;                                                                                             \
    } while (0)

/* The steps that may find a run exhausted, checked: count front steps over key[i, i_end) and key[j, j_end). */
static void merge_front_checked(const uint64_t *restrict key, const int32_t *restrict index, int64_t i, int64_t i_end,
                                int64_t j, int64_t j_end, int64_t o, int64_t count, uint64_t *restrict out_key,
                                int32_t *restrict out_index) {
    for (; count > 0; --count, ++o) {
        const int64_t from = i >= i_end || (j < j_end && key[j] < key[i]) ? j++ : i++;
        out_key[o] = key[from];
        if (index != NULL) out_index[o] = index[from];
    }
}

/* count back steps over key[i_begin, i] and key[j_begin, j], checked. */
static void merge_back_checked(const uint64_t *restrict key, const int32_t *restrict index, int64_t i,
                               int64_t i_begin, int64_t j, int64_t j_begin, int64_t o, int64_t count,
                               uint64_t *restrict out_key, int32_t *restrict out_index) {
    for (; count > 0; --count, --o) {
        const int64_t from = j < j_begin || (i >= i_begin && key[i] > key[j]) ? i-- : j--;
        out_key[o] = key[from];
        if (index != NULL) out_index[o] = index[from];
    }
}

/* Stable merge of the sorted runs key[lo, mid) and key[mid, hi) (with their node indices where with_index) into
 * out[lo, hi). Each step waits on the previous one's loads and compare, so the merge runs as four independent chains
 * in one loop: a binary search splits the output in halves (the first half takes key[lo, split_a) and
 * key[mid, split_b)), and each half is merged from its front and from its back. All follow the same total order, so
 * they meet exactly. Each chunk of the loop runs as many steps as no chain can exhaust a run in; the rest are
 * checked. */
static inline void merge_core(const uint64_t *restrict key, const int32_t *restrict index, int64_t lo, int64_t mid,
                              int64_t hi, uint64_t *restrict out_key, int32_t *restrict out_index,
                              const int with_index) {
    const int64_t na = mid - lo, nb = hi - mid, half = (na + nb) / 2;
    int64_t low = half > nb ? half - nb : 0, high = half < na ? half : na; /* taken from the first run */
    while (low < high) {
        const int64_t t = (low + high) / 2;
        if (key[lo + t] <= key[mid + half - t - 1])
            low = t + 1;
        else
            high = t;
    }
    const int64_t split_a = lo + low, split_b = mid + half - low;
    int64_t i1 = lo, j1 = mid, o1 = lo, left1 = half / 2;                                   /* first half, front */
    int64_t i2 = split_a - 1, j2 = split_b - 1, o2 = lo + half - 1, left2 = half - half / 2; /* first half, back */
    int64_t i3 = split_a, j3 = split_b, o3 = lo + half, left3 = (hi - lo - half) / 2;       /* second half, front */
    int64_t i4 = mid - 1, j4 = hi - 1, o4 = hi - 1, left4 = (hi - lo - half) - left3;       /* second half, back */
    for (;;) {
        int64_t steps = left1 < left3 ? left1 : left3; /* left2 >= left1, left4 >= left3 */
        steps = split_a - i1 < steps ? split_a - i1 : steps;
        steps = split_b - j1 < steps ? split_b - j1 : steps;
        steps = i2 + 1 - lo < steps ? i2 + 1 - lo : steps;
        steps = j2 + 1 - mid < steps ? j2 + 1 - mid : steps;
        steps = mid - i3 < steps ? mid - i3 : steps;
        steps = hi - j3 < steps ? hi - j3 : steps;
        steps = i4 + 1 - split_a < steps ? i4 + 1 - split_a : steps;
        steps = j4 + 1 - split_b < steps ? j4 + 1 - split_b : steps;
        if (steps <= 0) break;
        left1 -= steps;
        left2 -= steps;
        left3 -= steps;
        left4 -= steps;
        for (int64_t t = 0; t < steps; ++t) {
            MERGE_FRONT_STEP(i1, j1, o1);
            MERGE_BACK_STEP(i2, j2, o2);
            MERGE_FRONT_STEP(i3, j3, o3);
            MERGE_BACK_STEP(i4, j4, o4);
        }
    }
    if (!with_index) index = NULL;
    merge_front_checked(key, index, i1, split_a, j1, split_b, o1, left1, out_key, out_index);
    merge_back_checked(key, index, i2, lo, j2, mid, o2, left2, out_key, out_index);
    merge_front_checked(key, index, i3, mid, j3, hi, o3, left3, out_key, out_index);
    merge_back_checked(key, index, i4, split_a, j4, split_b, o4, left4, out_key, out_index);
}
#undef MERGE_FRONT_STEP
#undef MERGE_BACK_STEP

/* merge_core for keys that carry their node index in their low bits (float nodes: unique keys, half the traffic). */
static void merge_runs_packed(const uint64_t *restrict key, int64_t lo, int64_t mid, int64_t hi,
                              uint64_t *restrict out_key) {
    merge_core(key, NULL, lo, mid, hi, out_key, NULL, 0);
}

static void merge_runs(const uint64_t *restrict key, const int32_t *restrict index, int64_t lo, int64_t mid,
                       int64_t hi, uint64_t *restrict out_key, int32_t *restrict out_index) {
    merge_core(key, index, lo, mid, hi, out_key, out_index, 1);
}

/* through[source[m]] = values[m]: on its own, as inside the union rule's kernel gcc keeps the loop's pointers on the
 * stack. */
static void scatter(const REAL *restrict values, const int32_t *restrict source, int64_t M, REAL *restrict through) {
    for (int64_t m = 0; m < M; ++m) through[source[m]] = values[m];
}

/* qmc's one-dimensional union rule (sb3_gmm.entropy.quadrature.union_rule_entropy) and its first derivative.
 *
 * Per batch element: the nodes mu_j + s_j eps_p of every component j (eps sorted ascending, so each component's list
 * is sorted) and each component's ends mu_j -+ end s_j, merged into one sorted list x_0 < ... < x_{M-1}
 * (M = K (n + 2)); trapezoid weights omega_m from the gaps; the estimate
 *   H(w) + sum_i w_i H_i - sum_i w_i A_i / B_i,   A_i = sum_m omega_m g_im h(x_m),   B_i = sum_m omega_m g_im,
 * with h the entropy of the responsibilities and g_im = exp(-z_im^2 / 2), z_im = (x_m - mu_i) / s_i: each
 * component's integral of h divided by the rule's integral of that component (exact where h is constant). The
 * gradient follows the nodes (through x_m into mu_j and s_j, and through the weights' gaps), so it is the exact
 * derivative of the returned value, as autograd's through the torch formula.
 *
 * Inputs: log_weights [B, K], means / stds / log_stds [B, K] (D = 1), batch strides as for the other kernels;
 * unit_nodes [n] ascending. Outputs: value [B]; with grad_log_weights not NULL, [K] log weights, means, stds and
 * log stds per element at grad_batch_stride. Returns 0, or 1 when the workspace could not be allocated.
 */
int sb3_gmm_union_entropy_1d(int64_t n_batch, int64_t n_components, int64_t n_points, const REAL *log_weights,
                             const REAL *means, const REAL *stds, const REAL *log_stds, const int64_t *batch_strides,
                             const REAL *unit_nodes, REAL end, REAL distance_cap, REAL *value,
                             REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds, REAL *grad_log_stds,
                             int64_t grad_batch_stride) {
    const int64_t K = n_components, n = n_points, per = n + 2, M = K * (n + 2);
    const int with_gradient = grad_log_weights != NULL;
    /* eps per list position (ends included); nodes and per-node scratch [M] x 10; per (component, node) scratch
     * [K, M] x 3; per component [K] x 5. The merge's two buffers of keys, padded by two at each end [2, M + 4], and
     * of node indices [2, M]. Loops run over the nodes innermost so that the compiler vectorises them (exp and log
     * included). */
    REAL *work = (REAL *)malloc((size_t)(per + 10 * M + 3 * K * M + 5 * K) * sizeof(REAL));
    uint64_t *keys = (uint64_t *)malloc((size_t)(2 * (M + 4)) * sizeof(uint64_t));
    int32_t *indices = (int32_t *)malloc((size_t)(2 * M) * sizeof(int32_t));
    if (work == NULL || keys == NULL || indices == NULL) {
        free(work);
        free(keys);
        free(indices);
        return 1;
    }
    REAL *restrict eps = work;                   /* [n + 2]: -end, unit nodes, +end */
    REAL *restrict nodes = eps + per;            /* [M]: sorted */
    REAL *restrict shift = nodes + M;            /* [M]: max_k l_k (where the offsets spread widely) */
    REAL *restrict normaliser = shift + M;       /* [M]: sum_k exp(l_k - shift), then its log, then h - log N */
    REAL *restrict tilted = normaliser + M;      /* [M]: sum_k exp(l_k - shift) (l_k - shift), then 1 / N */
    REAL *restrict omega = tilted + M;           /* [M] */
    REAL *restrict entropy = omega + M;          /* [M]: h */
    REAL *restrict f = entropy + M;              /* [M]: F = sum_i alpha_i g_i (h - R_i), the integrand's part */
    REAL *restrict coupling = f + M;             /* [M]: G = sum_i alpha_i g_i, then -G / N */
    REAL *restrict slope = coupling + M;         /* [M]: dF/dx */
    REAL *restrict through = slope + M;          /* [M]: d value / d node, by node index */
    REAL *restrict joint = through + M;          /* [K, M]: l, then l - shift */
    REAL *restrict exponential = joint + K * M;  /* [K, M]: exp(l - shift) */
    REAL *restrict gauss = exponential + K * M;  /* [K, M]: g */
    REAL *restrict inv_std = gauss + K * M;      /* [K] */
    REAL *restrict offset = inv_std + K;         /* [K]: log w - log s */
    REAL *restrict weight = offset + K;          /* [K]: w */
    REAL *restrict average = weight + K;         /* [K]: R = A / B */
    REAL *restrict alpha = average + K;          /* [K]: w / B */
    int32_t *restrict buffer_index = indices;    /* [2, M]: node index j (n + 2) + list position */
    for (int64_t h = 0; h < 2 * (M + 4); ++h) keys[h] = 0; /* the padding is read, never taken */
    eps[0] = -end;
    for (int64_t p = 0; p < n; ++p) eps[p + 1] = unit_nodes[p];
    eps[n + 1] = end;
    for (int64_t b = 0; b < n_batch; ++b) {
        const REAL *lw = log_weights + b * batch_strides[0], *mu = means + b * batch_strides[1];
        const REAL *s = stds + b * batch_strides[2], *ls = log_stds + b * batch_strides[3];
        REAL *g_lw = NULL, *g_mu = NULL, *g_s = NULL, *g_ls = NULL;
        if (with_gradient) {
            g_lw = grad_log_weights + b * grad_batch_stride;
            g_mu = grad_means + b * grad_batch_stride;
            g_s = grad_stds + b * grad_batch_stride;
            g_ls = grad_log_stds + b * grad_batch_stride;
        }
        if (!mixture_usable(lw, mu, s, ls, K, K)) {
            value[b] = not_a_number();
            if (with_gradient) {
                fill_nan(g_lw, K);
                fill_nan(g_mu, K);
                fill_nan(g_s, K);
                fill_nan(g_ls, K);
            }
            continue;
        }
        /* Every node, component by component (each list sorted), then bottom-up merges of neighbouring runs: about
         * M log2 K branch-free steps, where a K-way merge takes M K branchy ones. */
        /* Float nodes carry their index in the key's low half (a key of a float is 32 bits), so the merge moves one
         * word per node; double ones carry it beside. */
        const int packed = sizeof(REAL) == 4;
        uint64_t *restrict key = keys + 2;
        int32_t *restrict source = buffer_index;
        for (int64_t k = 0; k < K; ++k)
            for (int64_t p = 0; p < per; ++p) {
                const uint64_t node_key = sort_key(mu[k] + s[k] * eps[p]);
                key[k * per + p] = packed ? node_key << 32 | (uint64_t)(k * per + p) : node_key;
                source[k * per + p] = (int32_t)(k * per + p);
            }
        for (int64_t width = per; width < M; width *= 2) {
            uint64_t *restrict out_key = key == keys + 2 ? keys + M + 6 : keys + 2;
            int32_t *restrict out_index = source == buffer_index ? buffer_index + M : buffer_index;
            for (int64_t lo = 0; lo < M; lo += 2 * width) {
                const int64_t mid = lo + width < M ? lo + width : M, hi = lo + 2 * width < M ? lo + 2 * width : M;
                if (mid == hi)
                    for (int64_t m = lo; m < hi; ++m) {
                        out_key[m] = key[m];
                        out_index[m] = source[m];
                    }
                else if (packed)
                    merge_runs_packed(key, lo, mid, hi, out_key);
                else
                    merge_runs(key, source, lo, mid, hi, out_key, out_index);
            }
            key = out_key;
            if (!packed) source = out_index;
        }
        if (packed)
            for (int64_t m = 0; m < M; ++m) {
                nodes[m] = key_value(key[m] >> 32);
                source[m] = (int32_t)(key[m] & 0xffffffffu);
            }
        else
            for (int64_t m = 0; m < M; ++m) nodes[m] = key_value(key[m]);
        omega[0] = (REAL)0.5 * (nodes[1] - nodes[0]);
        for (int64_t m = 1; m < M - 1; ++m) omega[m] = (REAL)0.5 * (nodes[m + 1] - nodes[m - 1]);
        omega[M - 1] = (REAL)0.5 * (nodes[M - 1] - nodes[M - 2]);
        REAL total = 0;
        for (int64_t k = 0; k < K; ++k) {
            const REAL w = exp(lw[k]);
            total += w * (HALF_LOG_2PI_E + ls[k] - lw[k]);
            weight[k] = w;
            inv_std[k] = 1 / s[k];
            offset[k] = lw[k] - ls[k];
            if (with_gradient) {
                g_lw[k] = w * (HALF_LOG_2PI_E + ls[k] - lw[k]) - w;
                g_ls[k] = w;
                g_mu[k] = g_s[k] = 0;
            }
        }
        /* l_k = log w_k + log N_k(x) + log sqrt(2 pi) = offset_k - z_k^2 / 2 and g_k at every node. With
         * e_k = exp(l_k - shift), N = sum_k e_k and T = sum_k e_k (l_k - shift): h = -sum_k r_k log r_k = log N - T / N.
         * Any shift per node that keeps the largest e_k from under- or overflowing serves. Each node lies within
         * `end` stds of its own component, so where the offsets of the element span less than SPREAD the largest
         * offset is such a shift, and e_k = exp(offset_k - shift) g_k costs no exp of its own; otherwise the shift
         * is the largest l_k per node (a second exp per component and node). */
        REAL top = offset[0], bottom = offset[0];
        for (int64_t k = 1; k < K; ++k) {
            top = offset[k] > top ? offset[k] : top;
            bottom = offset[k] < bottom ? offset[k] : bottom;
        }
        const REAL spread = sizeof(REAL) == 4 ? (REAL)40 : (REAL)500;
        for (int64_t m = 0; m < M; ++m) normaliser[m] = tilted[m] = 0;
        if (top - bottom + (REAL)0.5 * end * end <= spread)
            for (int64_t k = 0; k < K; ++k) {
                REAL *restrict l = joint + k * M, *restrict g = gauss + k * M, *restrict e = exponential + k * M;
                const REAL mean = mu[k], scale = inv_std[k], constant = offset[k] - top;
                const REAL factor = exp(constant);
                #pragma GCC ivdep /* the scratch rows never overlap */
                for (int64_t m = 0; m < M; ++m) {
                    const REAL z = cap_distance((nodes[m] - mean) * scale, distance_cap);
                    const REAL square = (REAL)-0.5 * z * z, gaussian = exp_floored(square);
                    const REAL centred = constant + square, exponent = factor * gaussian;
                    g[m] = gaussian;
                    l[m] = centred;
                    e[m] = exponent;
                    normaliser[m] += exponent;
                    tilted[m] += exponent * centred;
                }
            }
        else {
            for (int64_t k = 0; k < K; ++k) {
                REAL *restrict l = joint + k * M, *restrict g = gauss + k * M;
                const REAL mean = mu[k], scale = inv_std[k], constant = offset[k];
                for (int64_t m = 0; m < M; ++m) {
                    const REAL z = cap_distance((nodes[m] - mean) * scale, distance_cap);
                    g[m] = exp_floored((REAL)-0.5 * z * z);
                    l[m] = constant - (REAL)0.5 * z * z;
                }
                if (k == 0)
                    for (int64_t m = 0; m < M; ++m) shift[m] = l[m];
                else
                    for (int64_t m = 0; m < M; ++m) shift[m] = l[m] > shift[m] ? l[m] : shift[m];
            }
            for (int64_t k = 0; k < K; ++k) {
                REAL *restrict l = joint + k * M, *restrict e = exponential + k * M;
                for (int64_t m = 0; m < M; ++m) {
                    const REAL centred = l[m] - shift[m], exponent = exp_floored(centred);
                    l[m] = centred;
                    e[m] = exponent;
                    normaliser[m] += exponent;
                    tilted[m] += exponent * centred;
                }
            }
        }
        for (int64_t m = 0; m < M; ++m) {
            const REAL log_normaliser = log(normaliser[m]), inv_normaliser = 1 / normaliser[m];
            entropy[m] = log_normaliser - tilted[m] * inv_normaliser;
            normaliser[m] = log_normaliser;
            tilted[m] = inv_normaliser;
        }
        for (int64_t k = 0; k < K; ++k) {
            const REAL *g = gauss + k * M;
            REAL sum_entropy = 0, sum_mass = 0;
            for (int64_t m = 0; m < M; ++m) {
                sum_entropy += omega[m] * g[m] * entropy[m];
                sum_mass += omega[m] * g[m];
            }
            average[k] = sum_entropy / sum_mass;
            alpha[k] = weight[k] / sum_mass;
            total -= weight[k] * average[k];
        }
        value[b] = total;
        if (!with_gradient) continue;
        /* With alpha and R held (d(A/B) = (dA - R dB) / B, and R's own factor w_k apart), the estimate subtracts
         * sum_m omega_m F_m, F = sum_i alpha_i g_i (h - R_i). dF/dl_k = -G r_k (log r_k + h) = -G (e_k / N)
         * (l_k - shift - log N + h) onto log w_k and log s_k; through -z_k^2 / 2 (in l_k and in g_k) dF/d(-z_k^2/2)
         * = dF/dl_k + alpha_k g_k (h - R_k) onto mu_k, s_k and into F' = sum_k dF/d(-z_k^2/2) (-z_k / s_k). */
        for (int64_t m = 0; m < M; ++m) slope[m] = f[m] = coupling[m] = 0;
        for (int64_t k = 0; k < K; ++k) {
            const REAL *g = gauss + k * M;
            const REAL a = alpha[k], ar = alpha[k] * average[k];
            for (int64_t m = 0; m < M; ++m) {
                coupling[m] += a * g[m];
                f[m] -= ar * g[m];
            }
        }
        /* Per node, for the loop below: -G / N into coupling, h - log N into normaliser. */
        for (int64_t m = 0; m < M; ++m) {
            f[m] += coupling[m] * entropy[m];
            coupling[m] *= -tilted[m];
            normaliser[m] = entropy[m] - normaliser[m];
        }
        for (int64_t k = 0; k < K; ++k) {
            const REAL *l = joint + k * M, *e = exponential + k * M, *g = gauss + k * M;
            const REAL mean = mu[k], scale = inv_std[k], a = alpha[k], r_k = average[k];
            REAL sum_joint = 0, sum_mean = 0, sum_std = 0;
            for (int64_t m = 0; m < M; ++m) {
                const REAL z = cap_distance((nodes[m] - mean) * scale, distance_cap);
                const REAL d_joint = coupling[m] * e[m] * (l[m] + normaliser[m]);
                const REAL d_square = d_joint + a * g[m] * (entropy[m] - r_k);
                const REAL weighted = omega[m] * d_square;
                slope[m] -= d_square * z * scale;
                sum_joint += omega[m] * d_joint;
                sum_mean += weighted * z;
                sum_std += weighted * z * z;
            }
            g_lw[k] -= sum_joint + weight[k] * r_k;
            g_ls[k] += sum_joint;
            g_mu[k] -= sum_mean * scale;
            g_s[k] -= sum_std * scale;
        }
        /* Through the nodes: d(sum omega f)/d x_m, put back at its node index, then x = mu_j + s_j eps into its
         * component (a contiguous sum per component). */
        const REAL first = omega[0] * slope[0] - (REAL)0.5 * (f[0] + f[1]);
        const REAL last = omega[M - 1] * slope[M - 1] + (REAL)0.5 * (f[M - 2] + f[M - 1]);
        for (int64_t m = 1; m < M - 1; ++m) omega[m] = omega[m] * slope[m] + (REAL)0.5 * (f[m - 1] - f[m + 1]);
        omega[0] = first;
        omega[M - 1] = last;
        scatter(omega, source, M, through);
        for (int64_t k = 0; k < K; ++k) {
            const REAL *t = through + k * per;
            REAL sum_mean = 0, sum_std = 0;
            for (int64_t p = 0; p < per; ++p) {
                sum_mean += t[p];
                sum_std += t[p] * eps[p];
            }
            g_mu[k] -= sum_mean;
            g_s[k] -= sum_std;
        }
    }
    free(work);
    free(keys);
    free(indices);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------------
 * A policy head's mixture in one call (sb3_gmm.distributions.GMMDistribution). PPO's minibatch asks for log p(a) and
 * the entropy of the same batch; through the kernels above that is the binding's ~8 recorded torch ops, two autograd
 * Functions and two calls, whose bookkeeping costs several times their arithmetic at minibatch sizes. Here the head's
 * raw outputs go in and both values with their derivatives w.r.t. those outputs come out.
 *
 * The head: per element, logits [K], means [K, D] and, without a shared parameter, raw log stds [K, D], contiguous,
 * element b starting head_stride * b after head. shared_log_std [K, D] (NULL: the log stds are in the head) is the
 * state-independent parameter. The binding is GMMDistribution.proba_distribution's: log weights = log_softmax(logits),
 * log stds = soft_clamp(raw, low, high, margin) (margin already clipped to half the interval), stds = exp(log stds).
 * ------------------------------------------------------------------------------------------------------------------ */

/* soft_clamp of sb3_gmm.distributions and its derivative (exactly 1 inside the bounds, as there). */
static inline REAL soft_clamp_value(REAL raw, REAL low, REAL high, REAL margin, REAL *slope) {
    const REAL inner_low = low + margin, inner_high = high - margin;
    if (raw > inner_high) {
        const REAL decay = exp(-(raw - inner_high) / margin);
        *slope = decay;
        return high - margin * decay;
    }
    if (raw < inner_low) {
        const REAL decay = exp(-(inner_low - raw) / margin);
        *slope = decay;
        return low + margin * decay;
    }
    *slope = 1;
    return raw;
}

/* One element's log weights (NaN where any of its parameters is unusable, which the kernels above turn into NaN
 * values and gradients) and, for log stds in the head, its log stds, stds and clamp slopes [K, D]. */
static void bind_element(const REAL *row, int64_t K, int64_t D, int head_log_stds, REAL low, REAL high, REAL margin,
                         REAL *lw, REAL *ls, REAL *s, REAL *slope) {
    int ok = 1;
    const int64_t n_params = K * (1 + (head_log_stds ? 2 : 1) * D);
    for (int64_t f = 0; f < n_params; ++f) ok &= usable(row[f], 0);
    if (!ok) {
        fill_nan(lw, K);
        if (head_log_stds) {
            fill_nan(ls, K * D);
            fill_nan(s, K * D);
            fill_nan(slope, K * D);
        }
        return;
    }
    REAL largest = row[0];
    for (int64_t k = 1; k < K; ++k) largest = row[k] > largest ? row[k] : largest;
    REAL total = 0;
    for (int64_t k = 0; k < K; ++k) total += exp(row[k] - largest);
    const REAL log_total = largest + log(total);
    for (int64_t k = 0; k < K; ++k) lw[k] = row[k] - log_total;
    if (!head_log_stds) return;
    const REAL *raw = row + K + K * D;
    for (int64_t f = 0; f < K * D; ++f) {
        ls[f] = soft_clamp_value(raw[f], low, high, margin, &slope[f]);
        s[f] = exp(ls[f]);
    }
}

/* The shared [K, D] log-std parameter's log stds, stds and clamp slopes, bound once for the batch (all NaN if any
 * entry is unusable). */
static void bind_shared(const REAL *raw, int64_t KD, REAL low, REAL high, REAL margin, REAL *ls, REAL *s, REAL *slope) {
    int ok = 1;
    for (int64_t f = 0; f < KD; ++f) ok &= usable(raw[f], 0);
    for (int64_t f = 0; f < KD; ++f) {
        if (!ok) {
            ls[f] = s[f] = slope[f] = not_a_number();
            continue;
        }
        ls[f] = soft_clamp_value(raw[f], low, high, margin, &slope[f]);
        s[f] = exp(ls[f]);
    }
}

/* A batch's binding into the workspace: log weights [B, K], and log stds, stds and clamp slopes [B, K, D] (log stds in
 * the head) or [K, D] (the shared parameter, bound once). Returns the batch stride of the last three (K D or 0). */
static int64_t bind_batch(int64_t n_batch, int64_t K, int64_t D, const REAL *head, int64_t head_stride,
                          const REAL *shared_log_std, REAL low, REAL high, REAL margin, REAL *lw, REAL *ls, REAL *s,
                          REAL *slope) {
    const int head_log_stds = shared_log_std == NULL;
    if (!head_log_stds) bind_shared(shared_log_std, K * D, low, high, margin, ls, s, slope);
    for (int64_t b = 0; b < n_batch; ++b)
        bind_element(head + b * head_stride, K, D, head_log_stds, low, high, margin, lw + b * K, ls + b * K * D,
                     s + b * K * D, slope + b * K * D);
    return head_log_stds ? K * D : 0;
}

/* The chain rule from the kernels' gradients (log weights [K], means / stds [K, D], log stds [K, D] or, with
 * ls_per_component, [K] summed over D) to the head's outputs: logits [K], means [K, D], raw log stds [K, D]. */
static void chain_to_head(const REAL *g_lw, const REAL *g_mu, const REAL *g_s, const REAL *g_ls, int ls_per_component,
                          const REAL *lw, const REAL *s, const REAL *slope, int64_t K, int64_t D, REAL *out) {
    REAL g_total = 0;
    for (int64_t k = 0; k < K; ++k) g_total += g_lw[k];
    for (int64_t k = 0; k < K; ++k) out[k] = g_lw[k] - exp(lw[k]) * g_total; /* through log_softmax */
    for (int64_t f = 0; f < K * D; ++f) out[K + f] = g_mu[f];
    for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) {
            const int64_t f = k * D + d;
            const REAL through_log_std = ls_per_component ? g_ls[k] : g_ls[f];
            out[K + K * D + f] = (through_log_std + g_s[f] * s[f]) * slope[f]; /* s = exp(ls), ls = clamp(raw) */
        }
}

int sb3_gmm_widened_mis_entropy(int64_t n_batch, int64_t n_components, int64_t dim, int64_t n_points,
                                const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                                const int64_t *batch_strides, const REAL *points, const REAL *point_weights,
                                REAL widening, REAL ratio, REAL sharpness, REAL soft_max, REAL distance_cap,
                                REAL *value, REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds,
                                REAL *grad_log_stds, int64_t grad_batch_stride);

/* The pooled rule's proposals for rows of log stds [rows, K, D] at row_stride (quadrature.mis_widening): log c =
 * log(1 + (widening - 1) sigmoid(u)), u = sharpness (softmax_D(ls) - ls - log ratio), the soft maximum over the
 * components at temperature 1 / soft_max. Writes the proposals' log stds and stds, and for the chain rule
 * a = d log c / d u * sharpness and the soft maximum's weights pi, each [rows, K, D] at row_stride. */
static void widen_rows(int64_t rows, int64_t K, int64_t D, const REAL *ls, int64_t row_stride, REAL widening,
                       REAL log_ratio, REAL sharpness, REAL soft_max, REAL *lt, REAL *t, REAL *a, REAL *pi) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) {
            const REAL *row = ls + r * row_stride;
            REAL top = row[d];
            for (int64_t k = 1; k < K; ++k) top = row[k * D + d] > top ? row[k * D + d] : top;
            REAL total = 0;
            for (int64_t k = 0; k < K; ++k) total += exp(soft_max * (row[k * D + d] - top));
            const REAL widest = top + log(total) / soft_max;
            for (int64_t k = 0; k < K; ++k) {
                const int64_t f = r * row_stride + k * D + d;
                const REAL step = 1 / (1 + exp(-sharpness * (widest - ls[f] - log_ratio)));
                const REAL factor = 1 + (widening - 1) * step;
                lt[f] = ls[f] + log(factor);
                t[f] = exp(lt[f]);
                a[f] = (widening - 1) * step * (1 - step) * sharpness / factor;
                pi[f] = exp(soft_max * (ls[f] - top)) / total;
            }
        }
}

/* The pooled rule's gradient through one element's proposals into its log stds: with G = dV/dlt + dV/dt t and
 * lt = ls + log c(ls), dV/dls_k'd += G_k'd (1 - a_k'd) + pi_k'd sum_k G_kd a_kd (a and pi from widen_rows). through
 * is scratch [K, D]. */
static void chain_proposals(int64_t K, int64_t D, const REAL *g_t, const REAL *g_lt, const REAL *t, const REAL *a,
                            const REAL *pi, REAL *through, REAL *g_ls) {
    for (int64_t f = 0; f < K * D; ++f) through[f] = g_lt[f] + g_t[f] * t[f];
    for (int64_t d = 0; d < D; ++d) {
        REAL shared = 0;
        for (int64_t k = 0; k < K; ++k) shared += through[k * D + d] * a[k * D + d];
        for (int64_t k = 0; k < K; ++k) {
            const int64_t f = k * D + d;
            g_ls[f] += through[f] * (1 - a[f]) + pi[f] * shared;
        }
    }
}

/*
 * log p(actions) [B] and (entropy not NULL) the entropy estimate [B]: with widening > 0 qmc's pooled rule
 * (sb3_gmm_widened_mis_entropy; points [K, D, n] and their weights [n], widening, ratio, sharpness and soft_max the
 * constants of mis_widening); else with union_end > 0 and D = 1 qmc's union rule (points
 * the ascending unit nodes [n]); else the per-component rule (points as for sb3_gmm_quadrature_entropy). With
 * grad_log_prob not NULL their derivatives w.r.t. the head: rows of K + 2 K D (logits, means, raw log stds; with a
 * shared parameter the last K D are this element's part of its gradient, which the caller sums over the batch), at
 * grad_stride per element; grad_entropy likewise when entropy is not NULL.
 * Returns 0, or 1 when memory for the workspace could not be allocated.
 */
int sb3_gmm_head_evaluate(int64_t n_batch, int64_t n_components, int64_t dim, const REAL *head, int64_t head_stride,
                          const REAL *shared_log_std, const REAL *actions, int64_t action_stride, REAL low, REAL high,
                          REAL margin, int64_t n_points, const REAL *points, int64_t point_component_stride,
                          const REAL *point_weights, int32_t responsibility_entropy, REAL union_end, REAL widening,
                          REAL ratio, REAL sharpness, REAL soft_max, REAL distance_cap, REAL *log_prob,
                          REAL *entropy, REAL *grad_log_prob, REAL *grad_entropy, int64_t grad_stride) {
    const int64_t K = n_components, D = dim, KD = K * D;
    const int head_log_stds = shared_log_std == NULL;
    const int with_gradient = grad_log_prob != NULL;
    const int pooled = entropy != NULL && widening > 0;
    const int64_t std_rows = head_log_stds ? n_batch : 1; /* a shared parameter is bound once */
    /* The entropy's gradient per element: log weights, means, stds, log stds ([K, D] pooled, per component [K]
     * otherwise, where they enter only through their sum over D). */
    const int64_t lp_width = D + K + 3 * KD, ent_width = pooled ? K + 3 * KD : K * (2 + 2 * D);
    int64_t size = n_batch * K + 3 * std_rows * KD;
    if (with_gradient) size += n_batch * (lp_width + (entropy != NULL ? ent_width : 0));
    REAL *work = (REAL *)malloc((size_t)size * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *lw = work, *ls = lw + n_batch * K, *s = ls + std_rows * KD, *slope = s + std_rows * KD;
    REAL *lp_grad = slope + std_rows * KD, *ent_grad = lp_grad + (with_gradient ? n_batch * lp_width : 0);
    const int64_t std_stride =
        bind_batch(n_batch, K, D, head, head_stride, shared_log_std, low, high, margin, lw, ls, s, slope);
    const int64_t lp_strides[5] = {action_stride, K, head_stride, std_stride, std_stride};
    REAL *g = with_gradient ? lp_grad : NULL;
    int status = sb3_gmm_mixture_log_prob(n_batch, K, D, actions, lw, head + K, s, ls, lp_strides, distance_cap,
                                          log_prob, g, g ? g + D : NULL, g ? g + D + K : NULL,
                                          g ? g + D + K + KD : NULL, g ? g + D + K + 2 * KD : NULL, lp_width);
    if (status == 0 && entropy != NULL) {
        const int64_t ent_strides[4] = {K, head_stride, std_stride, std_stride};
        REAL *e = with_gradient ? ent_grad : NULL;
        if (pooled)
            status = sb3_gmm_widened_mis_entropy(n_batch, K, D, n_points, lw, head + K, s, ls, ent_strides, points,
                                                 point_weights, widening, ratio, sharpness, soft_max, distance_cap,
                                                 entropy, e, e ? e + K : NULL, e ? e + K + KD : NULL,
                                                 e ? e + K + 2 * KD : NULL, ent_width);
        else if (union_end > 0) /* D = 1: qmc's union rule on the unit nodes `points` */
            status = sb3_gmm_union_entropy_1d(n_batch, K, n_points, lw, head + K, s, ls, ent_strides, points, union_end,
                                              distance_cap, entropy, e, e ? e + K : NULL, e ? e + 2 * K : NULL,
                                              e ? e + 3 * K : NULL, ent_width);
        else
            status = sb3_gmm_quadrature_entropy(n_batch, K, D, n_points, lw, head + K, s, ls, ent_strides, points,
                                            point_component_stride, point_weights, responsibility_entropy,
                                            distance_cap, entropy, e, e ? e + K : NULL, e ? e + K + KD : NULL,
                                            e ? e + K + 2 * KD : NULL, ent_width);
    }
    if (status == 0 && with_gradient)
        for (int64_t b = 0; b < n_batch; ++b) {
            const REAL *lw_b = lw + b * K, *s_b = s + b * std_stride, *slope_b = slope + b * std_stride;
            const REAL *lp = lp_grad + b * lp_width;
            chain_to_head(lp + D, lp + D + K, lp + D + K + KD, lp + D + K + 2 * KD, 0, lw_b, s_b, slope_b, K, D,
                          grad_log_prob + b * grad_stride);
            if (entropy == NULL) continue;
            const REAL *ent = ent_grad + b * ent_width;
            chain_to_head(ent, ent + K, ent + K + KD, ent + K + 2 * KD, !pooled, lw_b, s_b, slope_b, K, D,
                          grad_entropy + b * grad_stride);
        }
    free(work);
    return status;
}

/*
 * The rollout's draw and its log density in one call: per element the component argmax_k(logits_k - noise_k), with
 * noise [B, K] the log of Exp(1) draws (minus Gumbel noise: an exact draw from the weights), then
 * actions = mean + std * normal (normal [B, D] standard-normal noise), then log p(actions) [B]: GMMDistribution.sample
 * and log_prob on the same noise. Head layout and binding as sb3_gmm_head_evaluate. Returns 0, or 1 when the
 * workspace could not be allocated.
 */
int sb3_gmm_head_sample(int64_t n_batch, int64_t n_components, int64_t dim, const REAL *head, int64_t head_stride,
                        const REAL *shared_log_std, REAL low, REAL high, REAL margin, const REAL *log_exponential,
                        const REAL *normal, REAL distance_cap, REAL *actions, REAL *log_prob) {
    const int64_t K = n_components, D = dim, KD = K * D;
    const int head_log_stds = shared_log_std == NULL;
    const int64_t std_rows = head_log_stds ? n_batch : 1;
    REAL *work = (REAL *)malloc((size_t)(n_batch * K + 3 * std_rows * KD) * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *lw = work, *ls = lw + n_batch * K, *s = ls + std_rows * KD, *slope = s + std_rows * KD;
    const int64_t std_stride =
        bind_batch(n_batch, K, D, head, head_stride, shared_log_std, low, high, margin, lw, ls, s, slope);
    for (int64_t b = 0; b < n_batch; ++b) {
        const REAL *row = head + b * head_stride;
        /* The first largest, as torch.argmax (NaN logits leave component 0; such an element draws NaN below). */
        const REAL *noise = log_exponential + b * K;
        int64_t chosen = 0;
        REAL best = row[0] - noise[0];
        for (int64_t k = 1; k < K; ++k) {
            const REAL key = row[k] - noise[k];
            if (key > best) best = key, chosen = k;
        }
        const REAL *mu = row + K + chosen * D, *s_b = s + b * std_stride + chosen * D;
        /* An element with unusable parameters (bind_element left NaN log weights) draws NaN, as torch's draw would. */
        const int ok = usable(lw[b * K], 0);
        for (int64_t d = 0; d < D; ++d) actions[b * D + d] = ok ? mu[d] + s_b[d] * normal[b * D + d] : not_a_number();
    }
    const int64_t strides[5] = {D, K, head_stride, std_stride, std_stride};
    const int status = sb3_gmm_mixture_log_prob(n_batch, K, D, actions, lw, head + K, s, ls, strides, distance_cap,
                                                log_prob, NULL, NULL, NULL, NULL, NULL, 0);
    free(work);
    return status;
}

/* ------------------------------------------------------------------------------------------------------------------
 * qmc's pooled rule (sb3_gmm.entropy.quadrature.widened_mis_entropy) and its first derivative:
 * H(w) + sum_i w_i H_i - I, I = sum_i sum_m v_m p(x_im) h(x_im) / sum_j q_j(x_im), x_im = mu_i + t_i eps_im, with
 * q_j = N(mu_j, t_j^2) the widened proposals and h the entropy of the responsibilities. At component i's points
 * every component's log density is a quadratic form in eps, once with the mixture's stds s_j and log weights (for p)
 * and once with the proposals' t_j (for q): a = (mu_i - mu_j) / s_j, b = t_i / s_j, exponent
 * lw_j - sum_d log s_jd - sum_d (a + b eps)^2 / 2 (the D / 2 log(2 pi) cancels in h and in p / q).
 *
 * v_m are the point weights of a rule for N(0, I) (1 / n for Sobol points, the sinh rule's in 1-D). Per element and
 * component i the loops run over the n points innermost (n = 36 to 64 by default), so gcc vectorises them.
 * dV/dP_j = v w r_j log r_j and dV/dQ_j = v w h rho_j at each point (w = p / sum q, r and rho the shares of p and
 * of sum q), summed onto the coefficients through [eps, eps^2, 1] and then onto the inputs by the chain rule.
 *
 * Inputs: log_weights [B, K]; means, stds, log_stds, proposal stds t, proposal log stds [B, K, D], element b at
 * batch_strides[input] * b (0: shared by the whole batch); points [K, D, n] (component i's points, coordinate-major);
 * point_weights [n].
 * Outputs: value [B]; with grad_log_weights not NULL the gradient w.r.t. the six inputs ([K], then [K, D] each), each
 * at grad_batch_stride * b. Returns 0, or 1 when the workspace could not be allocated.
 * ------------------------------------------------------------------------------------------------------------------ */
int sb3_gmm_mis_entropy(int64_t n_batch, int64_t n_components, int64_t dim, int64_t n_points,
                        const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                        const REAL *proposal_stds, const REAL *proposal_log_stds, const int64_t *batch_strides,
                        const REAL *points, const REAL *point_weights, REAL distance_cap, REAL *value,
                        REAL *grad_log_weights,
                        REAL *grad_means, REAL *grad_stds, REAL *grad_log_stds, REAL *grad_proposal_stds,
                        REAL *grad_proposal_log_stds, int64_t grad_batch_stride) {
    const int64_t K = n_components, D = dim, n = n_points, KD = K * D;
    const int with_gradient = grad_log_weights != NULL;
    /* Exponents P, Q and their exponentials [K, n] each; per point: max and sum of P, sum of P's exponentials times
     * the exponent, h, max and sum of Q, the pooled weight [7, n]; eps^2 [K, D, n]; per component i: the p and q
     * forms' linear and quadratic coefficients [4, K, D], constants [2, K], and their scaled distances and std
     * ratios [4, K, D]; per element 1 / s and 1 / t [2, K, D] (each division once, not once per pair). */
    const int64_t size = 4 * K * n + 7 * n + KD * n + 8 * KD + 2 * K + 2 * KD;
    REAL *work = (REAL *)malloc((size_t)size * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *restrict P = work, *restrict Q = P + K * n, *restrict EP = Q + K * n, *restrict EQ = EP + K * n;
    REAL *restrict p_max = EQ + K * n, *restrict p_sum = p_max + n, *restrict p_moment = p_sum + n;
    REAL *restrict entropy = p_moment + n, *restrict q_max = entropy + n, *restrict q_sum = q_max + n;
    REAL *restrict pooled = q_sum + n, *restrict squares = pooled + n;
    REAL *restrict p_lin = squares + KD * n, *restrict p_quad = p_lin + KD;
    REAL *restrict q_lin = p_quad + KD, *restrict q_quad = q_lin + KD;
    REAL *restrict p_const = q_quad + KD, *restrict q_const = p_const + K;
    REAL *restrict p_dist = q_const + K, *restrict p_ratio = p_dist + KD; /* a and b of the p form, per j */
    REAL *restrict q_dist = p_ratio + KD, *restrict q_ratio = q_dist + KD; /* and of the q form */
    REAL *restrict inv_s = q_ratio + KD, *restrict inv_t = inv_s + KD;
    for (int64_t f = 0; f < KD * n; ++f) squares[f] = points[f] * points[f];

    for (int64_t b = 0; b < n_batch; ++b) {
        const REAL *lw = log_weights + b * batch_strides[0], *mu = means + b * batch_strides[1];
        const REAL *s = stds + b * batch_strides[2], *ls = log_stds + b * batch_strides[3];
        const REAL *t = proposal_stds + b * batch_strides[4], *lt = proposal_log_stds + b * batch_strides[5];
        REAL *g_lw = NULL, *g_mu = NULL, *g_s = NULL, *g_ls = NULL, *g_t = NULL, *g_lt = NULL;
        if (with_gradient) {
            g_lw = grad_log_weights + b * grad_batch_stride;
            g_mu = grad_means + b * grad_batch_stride;
            g_s = grad_stds + b * grad_batch_stride;
            g_ls = grad_log_stds + b * grad_batch_stride;
            g_t = grad_proposal_stds + b * grad_batch_stride;
            g_lt = grad_proposal_log_stds + b * grad_batch_stride;
        }
        int ok = mixture_usable(lw, mu, s, ls, K, KD);
        for (int64_t f = 0; f < KD; ++f) ok &= usable(t[f], 1) & usable(lt[f], 0);
        if (!ok) {
            value[b] = not_a_number();
            if (with_gradient) {
                fill_nan(g_lw, K);
                fill_nan(g_mu, KD);
                fill_nan(g_s, KD);
                fill_nan(g_ls, KD);
                fill_nan(g_t, KD);
                fill_nan(g_lt, KD);
            }
            continue;
        }
        /* The upper bound sum_i w_i (H_i - log w_i), exact. */
        REAL total = 0;
        for (int64_t i = 0; i < K; ++i) {
            const REAL w = exp(lw[i]);
            REAL gaussian = HALF_LOG_2PI_E * (REAL)D;
            for (int64_t d = 0; d < D; ++d) gaussian += ls[i * D + d];
            total += w * (gaussian - lw[i]);
            if (!with_gradient) continue;
            g_lw[i] = w * (gaussian - lw[i]) - w;
            for (int64_t d = 0; d < D; ++d) {
                g_ls[i * D + d] = w;
                g_mu[i * D + d] = g_s[i * D + d] = g_t[i * D + d] = g_lt[i * D + d] = 0;
            }
        }
        for (int64_t f = 0; f < KD; ++f) {
            inv_s[f] = 1 / s[f];
            inv_t[f] = 1 / t[f];
        }
        REAL integral = 0;
        for (int64_t i = 0; i < K; ++i) {
            const REAL *eps = points + i * D * n, *eps2 = squares + i * D * n;
            /* Both forms' coefficients for the pairs (i, j). */
            for (int64_t j = 0; j < K; ++j) {
                REAL pc = lw[j], qc = 0;
                for (int64_t d = 0; d < D; ++d) {
                    const int64_t jd = j * D + d;
                    const REAL diff = mu[i * D + d] - mu[jd];
                    const REAL pa = cap_distance(diff * inv_s[jd], distance_cap), pb = t[i * D + d] * inv_s[jd];
                    const REAL qa = cap_distance(diff * inv_t[jd], distance_cap), qb = t[i * D + d] * inv_t[jd];
                    p_dist[jd] = pa;
                    p_ratio[jd] = pb;
                    q_dist[jd] = qa;
                    q_ratio[jd] = qb;
                    p_lin[jd] = -pa * pb;
                    p_quad[jd] = (REAL)-0.5 * pb * pb;
                    q_lin[jd] = -qa * qb;
                    q_quad[jd] = (REAL)-0.5 * qb * qb;
                    pc -= ls[jd] + (REAL)0.5 * pa * pa;
                    qc -= lt[jd] + (REAL)0.5 * qa * qa;
                }
                p_const[j] = pc;
                q_const[j] = qc;
            }
            /* Exponents at every point, and their running maxima. */
            for (int64_t j = 0; j < K; ++j) {
                REAL *restrict pj = P + j * n, *restrict qj = Q + j * n;
                for (int64_t m = 0; m < n; ++m) {
                    pj[m] = p_const[j];
                    qj[m] = q_const[j];
                }
                for (int64_t d = 0; d < D; ++d) {
                    const REAL *e = eps + d * n, *e2 = eps2 + d * n;
                    const REAL pl = p_lin[j * D + d], pq = p_quad[j * D + d];
                    const REAL ql = q_lin[j * D + d], qq = q_quad[j * D + d];
                    #pragma GCC ivdep /* the scratch rows never overlap */
                    for (int64_t m = 0; m < n; ++m) {
                        pj[m] += pl * e[m] + pq * e2[m];
                        qj[m] += ql * e[m] + qq * e2[m];
                    }
                }
                if (j == 0)
                    for (int64_t m = 0; m < n; ++m) p_max[m] = pj[m], q_max[m] = qj[m];
                else
                    #pragma GCC ivdep /* the scratch rows never overlap */
                    for (int64_t m = 0; m < n; ++m) {
                        p_max[m] = pj[m] > p_max[m] ? pj[m] : p_max[m];
                        q_max[m] = qj[m] > q_max[m] ? qj[m] : q_max[m];
                    }
            }
            for (int64_t m = 0; m < n; ++m) p_sum[m] = p_moment[m] = q_sum[m] = 0;
            for (int64_t j = 0; j < K; ++j) {
                REAL *restrict pj = P + j * n, *restrict qj = Q + j * n;
                REAL *restrict epj = EP + j * n, *restrict eqj = EQ + j * n;
                #pragma GCC ivdep /* the scratch rows never overlap */
                for (int64_t m = 0; m < n; ++m) {
                    pj[m] -= p_max[m];
                    qj[m] -= q_max[m];
                    epj[m] = exp(pj[m]);
                    eqj[m] = exp(qj[m]);
                    p_sum[m] += epj[m];
                    p_moment[m] += pj[m] * epj[m];
                    q_sum[m] += eqj[m];
                }
            }
            /* h = log S - sum_j e_j P_j / S (P relative to its maximum); the pooled weight p / sum q. */
            REAL part = 0;
            #pragma GCC ivdep /* the scratch rows never overlap */
            for (int64_t m = 0; m < n; ++m) {
                const REAL log_p_sum = log(p_sum[m]);
                entropy[m] = log_p_sum - p_moment[m] / p_sum[m];
                pooled[m] = exp(p_max[m] + log_p_sum - q_max[m] - log(q_sum[m]));
                part += point_weights[m] * pooled[m] * entropy[m];
                /* Reused below: log S, then the pooled weight times the point weight. */
                p_moment[m] = log_p_sum;
            }
            integral += part;
            if (!with_gradient) continue;
#pragma GCC ivdep /* the scratch rows never overlap */
            for (int64_t m = 0; m < n; ++m) pooled[m] *= point_weights[m];
            for (int64_t j = 0; j < K; ++j) {
                REAL *restrict pj = P + j * n, *restrict qj = Q + j * n;
                const REAL *epj = EP + j * n, *eqj = EQ + j * n;
                /* In place: P_j becomes dV/dP_j = v w r_j log r_j, Q_j becomes dV/dQ_j = v w h rho_j. */
                REAL gp_const = 0, gq_const = 0;
                #pragma GCC ivdep /* the scratch rows never overlap */
                for (int64_t m = 0; m < n; ++m) {
                    const REAL r = epj[m] / p_sum[m];
                    pj[m] = pooled[m] * r * (pj[m] - p_moment[m]);
                    qj[m] = pooled[m] * entropy[m] * eqj[m] / q_sum[m];
                    gp_const += pj[m];
                    gq_const += qj[m];
                }
                g_lw[j] += gp_const;
                for (int64_t d = 0; d < D; ++d) {
                    const REAL *e = eps + d * n, *e2 = eps2 + d * n;
                    REAL gp_lin = 0, gp_quad = 0, gq_lin = 0, gq_quad = 0;
                    #pragma GCC ivdep /* the scratch rows never overlap */
                    for (int64_t m = 0; m < n; ++m) {
                        gp_lin += pj[m] * e[m];
                        gp_quad += pj[m] * e2[m];
                        gq_lin += qj[m] * e[m];
                        gq_quad += qj[m] * e2[m];
                    }
                    const int64_t id = i * D + d, jd = j * D + d;
                    const REAL pa = p_dist[jd], pb = p_ratio[jd], qa = q_dist[jd], qb = q_ratio[jd];
                    /* p form: lin = -a b, quad = -b^2 / 2, constant lw_j - log s_j - a^2 / 2 (summed over d). */
                    const REAL grad_pa = -gp_lin * pb - gp_const * pa, grad_pb = -gp_lin * pa - gp_quad * pb;
                    g_mu[id] += grad_pa * inv_s[jd];
                    g_mu[jd] -= grad_pa * inv_s[jd];
                    g_s[jd] -= (grad_pa * pa + grad_pb * pb) * inv_s[jd];
                    g_t[id] += grad_pb * inv_s[jd];
                    g_ls[jd] -= gp_const;
                    /* q form: the same with t_j, no log weight. */
                    const REAL grad_qa = -gq_lin * qb - gq_const * qa, grad_qb = -gq_lin * qa - gq_quad * qb;
                    g_mu[id] += grad_qa * inv_t[jd];
                    g_mu[jd] -= grad_qa * inv_t[jd];
                    g_t[jd] -= (grad_qa * qa + grad_qb * qb) * inv_t[jd];
                    g_t[id] += grad_qb * inv_t[jd];
                    g_lt[jd] -= gq_const;
                }
            }
        }
        value[b] = total - integral;
    }
    free(work);
    return 0;
}

/* qmc's pooled rule with the proposals widened here (quadrature.widened_mis_entropy as gmm_entropy calls it): inputs
 * log_weights [B, K], means, stds, log_stds [B, K, D] at batch_strides[4] (0: shared by the batch), points and
 * point_weights as sb3_gmm_mis_entropy's, mis_widening's constants. Outputs: value [B]; with grad_log_weights not
 * NULL the gradient w.r.t. the four inputs ([K], then [K, D] each, the log stds' including the path through the
 * proposals), each at grad_batch_stride * b. The batch runs in blocks, so the workspace stays small at any B.
 * Returns 0, or 1 when the workspace could not be allocated. */
int sb3_gmm_widened_mis_entropy(int64_t n_batch, int64_t n_components, int64_t dim, int64_t n_points,
                                const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                                const int64_t *batch_strides, const REAL *points, const REAL *point_weights,
                                REAL widening, REAL ratio, REAL sharpness, REAL soft_max, REAL distance_cap,
                                REAL *value, REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds,
                                REAL *grad_log_stds, int64_t grad_batch_stride) {
    const int64_t K = n_components, D = dim, KD = K * D, block = BLOCK, width = K + 5 * KD;
    const int with_gradient = grad_log_weights != NULL;
    if (n_batch <= 0) return 0; /* nothing to read: a shared parameter's pointer may be an empty tensor's */
    const int64_t rows = batch_strides[3] == 0 ? 1 : block; /* shared log stds: one set of proposals */
    /* Per block: proposals' log stds, stds, a, pi [rows, K, D] x 4, the pooled kernel's gradient [block, K + 5 K D];
     * scratch [K, D]. */
    REAL *work = (REAL *)malloc((size_t)(4 * rows * KD + (with_gradient ? block * width : 0) + KD) * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *lt = work, *t = lt + rows * KD, *a = t + rows * KD, *pi = a + rows * KD, *through = pi + rows * KD;
    REAL *g = through + KD; /* [block, K + 5 K D] with the gradient */
    const REAL log_ratio = log(ratio);
    const int64_t t_stride = rows == 1 ? 0 : KD;
    if (rows == 1) widen_rows(1, K, D, log_stds, KD, widening, log_ratio, sharpness, soft_max, lt, t, a, pi);
    int status = 0;
    for (int64_t start = 0; start < n_batch && status == 0; start += block) {
        const int64_t nb = n_batch - start < block ? n_batch - start : block;
        const REAL *ls = log_stds + start * batch_strides[3];
        if (rows != 1)
            for (int64_t e = 0; e < nb; ++e)
                widen_rows(1, K, D, ls + e * batch_strides[3], KD, widening, log_ratio, sharpness, soft_max,
                           lt + e * KD, t + e * KD, a + e * KD, pi + e * KD);
        const int64_t strides[6] = {batch_strides[0], batch_strides[1], batch_strides[2], batch_strides[3],
                                    t_stride, t_stride};
        status = sb3_gmm_mis_entropy(nb, K, D, n_points, log_weights + start * batch_strides[0],
                                     means + start * batch_strides[1], stds + start * batch_strides[2], ls, t, lt,
                                     strides, points, point_weights, distance_cap, value + start,
                                     with_gradient ? g : NULL, with_gradient ? g + K : NULL,
                                     with_gradient ? g + K + KD : NULL, with_gradient ? g + K + 2 * KD : NULL,
                                     with_gradient ? g + K + 3 * KD : NULL, with_gradient ? g + K + 4 * KD : NULL,
                                     width);
        if (!with_gradient || status != 0) continue;
        for (int64_t e = 0; e < nb; ++e) {
            const REAL *row = g + e * width;
            const int64_t out = (start + e) * grad_batch_stride;
            for (int64_t k = 0; k < K; ++k) grad_log_weights[out + k] = row[k];
            for (int64_t f = 0; f < KD; ++f) {
                grad_means[out + f] = row[K + f];
                grad_stds[out + f] = row[K + KD + f];
                grad_log_stds[out + f] = row[K + 2 * KD + f];
            }
            const int64_t p = rows == 1 ? 0 : e * KD;
            chain_proposals(K, D, row + K + 3 * KD, row + K + 4 * KD, t + p, a + p, pi + p, through,
                            grad_log_stds + out);
        }
    }
    free(work);
    return status;
}
