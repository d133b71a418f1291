/* The quadrature entropy estimate of sb3_gmm.entropy.quadrature and its first derivative, in one call.
 *
 * The same arithmetic as quadrature._fused_forward / _fused_backward (read those for the maths), for one batch
 * element at a time. Eager PyTorch pays a few microseconds per op and the fused torch path is ~90 of them, so at RL
 * minibatch sizes that bookkeeping, not the arithmetic, was the cost; here the whole forward and backward is one call.
 * Loops run over the points innermost so that the compiler vectorises them (exp and log included, through glibc's
 * vector math library; hence -ffast-math, which is safe here: every input is finite and every distance is capped).
 *
 * Compiled twice, with -DREAL=float and -DREAL=double (native.py builds and loads it; no Python headers, no torch
 * headers). Returns 0, or 1 when memory for the workspace could not be allocated.
 */
#include <math.h>
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

/* Entropy of a D-dimensional Gaussian with unit std: D / 2 * log(2 pi e). */
#define HALF_LOG_2PI_E 1.4189385332046727

/*
 * Inputs, all C-contiguous:
 *   log_weights [B, K], means / stds / log_stds [B, K, D];
 *   points: the standard-normal points of batch element b and component i start at
 *           points + b * point_batch_stride + i * point_component_stride, as [n, D];
 *   point_weights [n].
 * Outputs: value [B]; when grad_log_weights is not NULL, the gradient of value[b] w.r.t. the inputs of element b
 * (an incoming gradient of one): grad_log_weights [B, K], grad_means / grad_stds [B, K, D], grad_log_stds [B, K]
 * (log_stds enter only through their sum over D).
 */
int sb3_gmm_quadrature_entropy(int64_t n_batch, int64_t n_components, int64_t dim, int64_t n_points,
                               const REAL *log_weights, const REAL *means, const REAL *stds, const REAL *log_stds,
                               const REAL *points, int64_t point_batch_stride, int64_t point_component_stride,
                               const REAL *point_weights, int32_t responsibility_entropy, REAL distance_cap,
                               REAL *value, REAL *grad_log_weights, REAL *grad_means, REAL *grad_stds,
                               REAL *grad_log_stds) {
    const int64_t K = n_components, D = dim, n = n_points;
    const int64_t F = 2 * D + 1; /* coefficients per pair: linear [D], quadratic [D], constant */
    const int with_gradient = grad_log_weights != NULL;
    /* One workspace for everything per batch element, reused across the batch. */
    const int64_t size = K * K * F   /* coefficients */
                         + K * K * F /* their gradients */
                         + 2 * K * K * D /* scaled differences z_ij and std ratios r_ij */
                         + 2 * D * n /* the points of one component, transposed, and their squares */
                         + 2 * K * n /* shifted exponents and their exponentials for one component */
                         + 4 * n     /* max, normaliser, mean exponent, per-point scale */
                         + 2 * K;    /* weights, per-component estimates */
    REAL *work = (REAL *)malloc((size_t)size * sizeof(REAL));
    if (work == NULL) return 1;
    REAL *coefficients = work;
    REAL *grad_coefficients = coefficients + K * K * F;
    REAL *scaled_diff = grad_coefficients + K * K * F;
    REAL *std_ratio = scaled_diff + K * K * D;
    REAL *point_t = std_ratio + K * K * D;
    REAL *point_sq = point_t + D * n;
    REAL *shifted = point_sq + D * n;
    REAL *exponentials = shifted + K * n;
    REAL *shift = exponentials + K * n;
    REAL *normaliser = shift + n;
    REAL *mean_exponent = normaliser + n;
    REAL *point_scale = mean_exponent + n;
    REAL *weights = point_scale + n;
    REAL *per_component = weights + K;

    for (int64_t b = 0; b < n_batch; ++b) {
        const REAL *lw = log_weights + b * K;
        const REAL *mu = means + b * K * D;
        const REAL *s = stds + b * K * D;
        const REAL *ls = log_stds + b * K * D;
        /* NaN or inf in (callers that switched validation off) gives NaN out, as the torch path does, instead of
         * whatever the fast-math arithmetic would make of it. */
        int valid = 1;
        for (int64_t i = 0; i < K; ++i) valid &= usable(lw[i], 0);
        for (int64_t f = 0; f < K * D; ++f) valid &= usable(mu[f], 0) & usable(s[f], 1) & usable(ls[f], 0);
        if (!valid) {
            value[b] = not_a_number();
            if (with_gradient)
                for (int64_t k = 0; k < K; ++k) {
                    grad_log_weights[b * K + k] = grad_log_stds[b * K + k] = not_a_number();
                    for (int64_t d = 0; d < D; ++d)
                        grad_means[(b * K + k) * D + d] = grad_stds[(b * K + k) * D + d] = not_a_number();
                }
            continue;
        }
        for (int64_t i = 0; i < K; ++i) weights[i] = exp(lw[i]);
        /* log w_j + Delta_ij(eps) = c_ij + sum_d lin_ijd eps_d + quad_ijd eps_d^2 (quadrature._exponent_form). */
        for (int64_t i = 0; i < K; ++i) {
            REAL sum_log_std_i = 0;
            for (int64_t d = 0; d < D; ++d) sum_log_std_i += ls[i * D + d];
            for (int64_t j = 0; j < K; ++j) {
                REAL *coef = coefficients + (i * K + j) * F;
                REAL constant = sum_log_std_i + lw[j];
                for (int64_t d = 0; d < D; ++d) {
                    const REAL inv_std_j = 1 / s[j * D + d];
                    REAL z = (mu[i * D + d] - mu[j * D + d]) * inv_std_j;
                    z = z > distance_cap ? distance_cap : (z < -distance_cap ? -distance_cap : z);
                    const REAL r = s[i * D + d] * inv_std_j;
                    scaled_diff[(i * K + j) * D + d] = z;
                    std_ratio[(i * K + j) * D + d] = r;
                    coef[d] = -z * r;
                    coef[D + d] = (REAL)0.5 - (REAL)0.5 * r * r;
                    constant -= ls[j * D + d] + (REAL)0.5 * z * z;
                }
                coef[2 * D] = constant;
            }
        }
        if (with_gradient)
            for (int64_t f = 0; f < K * K * F; ++f) grad_coefficients[f] = 0;
        REAL total = 0;
        for (int64_t i = 0; i < K; ++i) {
            const REAL *eps = points + b * point_batch_stride + i * point_component_stride;
            for (int64_t d = 0; d < D; ++d)
                for (int64_t p = 0; p < n; ++p) {
                    point_t[d * n + p] = eps[p * D + d];
                    point_sq[d * n + p] = eps[p * D + d] * eps[p * D + d];
                }
            /* The first coordinate's terms, the constant and the running max over j in one pass; the other
             * coordinates (D > 1) add theirs before the max is taken. Few, long loops: at K <= 8 and n <= 64 the cost of
             * starting a vectorised loop is a large part of the work. */
            for (int64_t j = 0; j < K; ++j) {
                const REAL *coef = coefficients + (i * K + j) * F;
                REAL *restrict e = shifted + j * n;
                const REAL constant = coef[2 * D];
                for (int64_t d = 1; d < D; ++d) {
                    const REAL lin = coef[d], quad = coef[D + d];
                    const REAL *x = point_t + d * n, *x2 = point_sq + d * n;
                    if (d == 1)
                        for (int64_t p = 0; p < n; ++p) e[p] = lin * x[p] + quad * x2[p];
                    else
                        for (int64_t p = 0; p < n; ++p) e[p] += lin * x[p] + quad * x2[p];
                }
                const REAL lin = coef[0], quad = coef[D];
                const REAL *x = point_t, *x2 = point_sq;
                if (D == 1 && j == 0)
                    for (int64_t p = 0; p < n; ++p) shift[p] = e[p] = constant + lin * x[p] + quad * x2[p];
                else if (D == 1)
                    for (int64_t p = 0; p < n; ++p) {
                        e[p] = constant + lin * x[p] + quad * x2[p];
                        shift[p] = e[p] > shift[p] ? e[p] : shift[p];
                    }
                else if (j == 0)
                    for (int64_t p = 0; p < n; ++p) shift[p] = e[p] += constant + lin * x[p] + quad * x2[p];
                else
                    for (int64_t p = 0; p < n; ++p) {
                        e[p] += constant + lin * x[p] + quad * x2[p];
                        shift[p] = e[p] > shift[p] ? e[p] : shift[p];
                    }
            }
            for (int64_t p = 0; p < n; ++p) normaliser[p] = mean_exponent[p] = 0;
            for (int64_t j = 0; j < K; ++j) {
                REAL *e = shifted + j * n, *ex = exponentials + j * n;
                for (int64_t p = 0; p < n; ++p) {
                    e[p] -= shift[p];
                    ex[p] = exp(e[p]);
                    normaliser[p] += ex[p];
                    mean_exponent[p] += e[p] * ex[p];
                }
            }
            REAL averaged = 0; /* sum_p v_p h(x_ip) or sum_p v_p log(p(x_ip) / N_i(x_ip)) */
            for (int64_t p = 0; p < n; ++p) {
                mean_exponent[p] /= normaliser[p];
                const REAL log_normaliser = log(normaliser[p]);
                averaged += point_weights[p] * (responsibility_entropy ? log_normaliser - mean_exponent[p]
                                                                       : shift[p] + log_normaliser);
            }
            REAL gaussian = HALF_LOG_2PI_E * (REAL)D;
            for (int64_t d = 0; d < D; ++d) gaussian += ls[i * D + d];
            per_component[i] = responsibility_entropy ? gaussian - lw[i] - averaged : gaussian - averaged;
            total += weights[i] * per_component[i];
            if (!with_gradient) continue;
            /* d value / d exponent_ijp = w_i v_p r_ijp (e_ijp - mean_p) for the responsibility entropy, -w_i v_p r_ijp
             * for the log responsibility; then onto the coefficients through the features [eps, eps^2, 1]. */
            for (int64_t p = 0; p < n; ++p) point_scale[p] = weights[i] * point_weights[p] / normaliser[p];
            for (int64_t j = 0; j < K; ++j) {
                REAL *e = shifted + j * n;
                const REAL *ex = exponentials + j * n;
                REAL *grad_coef = grad_coefficients + (i * K + j) * F;
                const REAL *x = point_t, *x2 = point_sq;
                REAL constant = 0, lin = 0, quad = 0;
                if (responsibility_entropy)
                    for (int64_t p = 0; p < n; ++p) {
                        const REAL t = ex[p] * point_scale[p] * (e[p] - mean_exponent[p]);
                        e[p] = t;
                        constant += t;
                        lin += t * x[p];
                        quad += t * x2[p];
                    }
                else
                    for (int64_t p = 0; p < n; ++p) {
                        const REAL t = -ex[p] * point_scale[p];
                        e[p] = t;
                        constant += t;
                        lin += t * x[p];
                        quad += t * x2[p];
                    }
                grad_coef[2 * D] = constant;
                grad_coef[0] = lin;
                grad_coef[D] = quad;
                for (int64_t d = 1; d < D; ++d) {
                    const REAL *xd = point_t + d * n, *xd2 = point_sq + d * n;
                    lin = quad = 0;
                    for (int64_t p = 0; p < n; ++p) {
                        lin += e[p] * xd[p];
                        quad += e[p] * xd2[p];
                    }
                    grad_coef[d] = lin;
                    grad_coef[D + d] = quad;
                }
            }
        }
        value[b] = total;
        if (!with_gradient) continue;
        /* The chain rule of quadrature._fused_backward, with an incoming gradient of one. */
        REAL *g_lw = grad_log_weights + b * K, *g_mu = grad_means + b * K * D, *g_s = grad_stds + b * K * D;
        REAL *g_ls = grad_log_stds + b * K;
        for (int64_t k = 0; k < K; ++k) {
            REAL into = 0, out_of = 0; /* sum_i' grad_constant_{i' k}, sum_j grad_constant_{k j} */
            for (int64_t other = 0; other < K; ++other) {
                into += grad_coefficients[(other * K + k) * F + 2 * D];
                out_of += grad_coefficients[(k * K + other) * F + 2 * D];
            }
            g_lw[k] = weights[k] * per_component[k] + into - (responsibility_entropy ? weights[k] : 0);
            g_ls[k] = weights[k] + out_of - into;
            for (int64_t d = 0; d < D; ++d) g_mu[k * D + d] = g_s[k * D + d] = 0;
        }
        for (int64_t i = 0; i < K; ++i)
            for (int64_t j = 0; j < K; ++j) {
                const REAL *grad_coef = grad_coefficients + (i * K + j) * F;
                const REAL grad_constant = grad_coef[2 * D];
                for (int64_t d = 0; d < D; ++d) {
                    const REAL z = scaled_diff[(i * K + j) * D + d], r = std_ratio[(i * K + j) * D + d];
                    const REAL inv_std_j = 1 / s[j * D + d];
                    const REAL grad_scaled = -grad_constant * z - grad_coef[d] * r;
                    const REAL grad_ratio = -grad_coef[d] * z - grad_coef[D + d] * r;
                    const REAL grad_diff = grad_scaled * inv_std_j;
                    g_mu[i * D + d] += grad_diff;
                    g_mu[j * D + d] -= grad_diff;
                    g_s[i * D + d] += grad_ratio * inv_std_j;
                    g_s[j * D + d] -= (grad_ratio * r + grad_scaled * z) * inv_std_j;
                }
            }
    }
    free(work);
    return 0;
}
