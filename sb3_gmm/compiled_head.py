"""A policy head's mixture through the compiled kernels in one call.

PPO's minibatch asks a :class:`sb3_gmm.GMMDistribution` for ``log_prob(actions)`` and then ``entropy()`` of the same
batch. Done separately that is the binding's recorded ops (log_softmax, the log stds' clamp and exp), two autograd
Functions and two kernel calls, whose bookkeeping costs several times their arithmetic at minibatch sizes. Here the
head's raw outputs go into one call that returns both values and their derivatives w.r.t. those outputs, and
autograd sees one node. The rollout's draw and its log density are likewise one call.

Values and gradients equal the separate path's up to rounding (tests/test_compiled_head.py); second derivatives
(``create_graph=True``) differentiate that path instead, so they are exact too.
"""

from typing import Callable, Optional, Tuple

import torch as th

from sb3_gmm import native
from sb3_gmm.mixture import max_scaled_distance

# (action_params, log_std or None, actions) -> (log_prob, entropy) or (log_prob,): the same values through torch.
Reference = Callable[[th.Tensor, Optional[th.Tensor], th.Tensor], Tuple[th.Tensor, ...]]


def evaluate(
    kernels: native.Kernels,
    action_params: th.Tensor,
    log_std: Optional[th.Tensor],
    actions: th.Tensor,
    bounds: native.LogStdBounds,
    rule: Optional[Tuple[th.Tensor, th.Tensor, bool]],
    reference: Reference,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """``(log_prob, entropy)`` of a batch (entropy None without a rule), each ``[...]``, as one autograd node.

    :param kernels: :func:`sb3_gmm.native.library` of the inputs' dtype
    :param action_params: the head's outputs ``[..., K + K D (+ K D)]`` (logits, means, raw log stds in the head)
    :param log_std: the state-independent ``[K, D]`` raw log stds, or None (they are in the head)
    :param actions: ``[..., D]``, not requiring a gradient
    :param bounds: the log stds' soft clamp
    :param rule: the entropy's :class:`sb3_gmm.entropy.quadrature.PointRule`, or None for the log density alone
    :param reference: the same values through torch ops, differentiated where a backward records a graph
    """
    with_gradient = native.records_graph((action_params,) if log_std is None else (action_params, log_std))
    outputs = _CompiledHeadEvaluation.apply(
        action_params, log_std, actions, kernels, bounds, rule, reference, with_gradient
    )
    return outputs if isinstance(outputs, tuple) else (outputs, None)


def sample(
    kernels: native.Kernels,
    action_params: th.Tensor,
    log_std: Optional[th.Tensor],
    bounds: native.LogStdBounds,
    log_exponential: th.Tensor,
    normal: th.Tensor,
) -> Tuple[th.Tensor, th.Tensor]:
    """Actions ``[..., D]`` drawn with the given noise and their log densities ``[...]``, with no gradient.

    :param kernels: :func:`sb3_gmm.native.library` of the inputs' dtype
    :param action_params: the head's outputs ``[..., K + K D (+ K D)]``
    :param log_std: the state-independent ``[K, D]`` raw log stds, or None
    :param bounds: the log stds' soft clamp
    :param log_exponential: ``[..., K]`` logs of Exp(1) draws: the component is the argmax of the logits minus these
    :param normal: ``[..., D]`` standard-normal draws
    """
    batch_shape = action_params.shape[:-1]
    actions, log_prob = native.head_sample(
        kernels,
        action_params.detach().reshape(-1, action_params.shape[-1]),
        None if log_std is None else log_std.detach(),
        bounds,
        log_exponential.reshape(-1, log_exponential.shape[-1]),
        normal.reshape(-1, normal.shape[-1]),
        max_scaled_distance(action_params.dtype),
    )
    return actions.view(*batch_shape, actions.shape[-1]), log_prob.view(batch_shape)


class _CompiledHeadEvaluation(th.autograd.Function):
    """:func:`evaluate`: the kernel computes both values' gradients w.r.t. the head in the forward (for incoming
    gradients of one); the backward combines them with the incoming gradients. A backward that records a graph
    differentiates the reference instead."""

    @staticmethod
    def forward(ctx, action_params, log_std, actions, kernels, bounds, rule, reference, with_gradient):  # type: ignore[override]
        batch_shape, n_params = action_params.shape[:-1], action_params.shape[-1]
        flat = action_params.dim() == 2  # the PPO minibatch: no reshapes to pay
        log_prob, entropy, buffer = native.head_evaluate(
            kernels,
            action_params if flat else action_params.reshape(-1, n_params),
            log_std,
            actions if flat else actions.reshape(-1, actions.shape[-1]),
            bounds,
            rule,
            max_scaled_distance(action_params.dtype),
            with_gradient,
        )
        ctx.set_materialize_grads(False)
        ctx.reference = reference
        ctx.n_params = n_params
        ctx.save_for_backward(buffer, action_params, log_std, actions)
        if not flat:
            log_prob = log_prob.view(batch_shape)
            entropy = None if entropy is None else entropy.view(batch_shape)
        return log_prob if entropy is None else (log_prob, entropy)

    @staticmethod
    def backward(ctx, *grad_outputs):  # type: ignore[override]
        buffer, action_params, log_std, actions = ctx.saved_tensors
        nothing = (None,) * 8
        if all(grad is None for grad in grad_outputs):
            return nothing
        if th.is_grad_enabled():
            inputs = (action_params, log_std, actions)
            return native.differentiable_gradients(ctx.reference, inputs, ctx.needs_input_grad, grad_outputs, 8)
        # Per element: each incoming gradient times its value's gradient (a row of the buffer [N, 1 or 2, P]).
        parts = [(grad.reshape(-1, 1), buffer[:, index]) for index, grad in enumerate(grad_outputs) if grad is not None]
        combined = parts[0][0] * parts[0][1]
        for grad, part in parts[1:]:
            combined.addcmul_(grad, part)
        n_params = ctx.n_params
        grad_params = combined[:, :n_params].view(action_params.shape) if ctx.needs_input_grad[0] else None
        grad_log_std = None
        if log_std is not None and ctx.needs_input_grad[1]:
            # The shared parameter's gradient: each element's part, summed over the batch.
            grad_log_std = combined[:, n_params:].sum(0).view(log_std.shape)
        return grad_params, grad_log_std, *nothing[2:]
