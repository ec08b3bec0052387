"""Run third-party Triton kernels (fla, mamba-ssm) under the Triton interpreter on CPU (tests).

Two interpreter gaps stop them there (shared/spec/environment.md): multi-config ``@triton.autotune`` benchmarks
through a GPU driver ("0 active drivers"), and ``for i in range(n)`` gives a Python int on which their kernels call
``i.to(tl.int64)``. :func:`patch_triton_interpreter` closes both; seqmix's own kernels need no patch.
"""

from __future__ import annotations

import ast
import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["patch_triton_interpreter", "triton_interpreter"]


def triton_interpreter() -> bool:
    """Whether Triton kernels run in the interpreter (``TRITON_INTERPRET=1``: CPU, tests only; ~1 ms per program
    instance, so never an automatic backend choice)."""
    return os.environ.get("TRITON_INTERPRET") == "1"

# Kernels from these packages get tensor loop indices.
_PATCHED_PACKAGES = ("fla.", "mamba_ssm.")

_INTERPRETER_PATCHED = False


def patch_triton_interpreter() -> bool:
    """Let fla's Triton kernels run under ``TRITON_INTERPRET=1`` (CPU tests); a no-op otherwise.

    Two interpreter gaps stop fla 0.6 there (shared/spec/environment.md):

    * ``@triton.autotune`` with several configs benchmarks them, which needs a GPU driver ("0 active drivers").
      Under the interpreter timings mean nothing, so every config gets the same timing and the first is used.
    * ``for i in range(n)`` gives a Python int, and fla calls ``i.to(tl.int64)`` on loop indices. For kernels
      defined in fla's / mamba-ssm's modules only, the loop index is rebound to an interpreter tensor at the top of the body
      (``i = i``; the interpreter already wraps every assignment with ``to_tensor``).

    Idempotent. Returns True if the interpreter is active and patched.
    """
    global _INTERPRETER_PATCHED
    if not triton_interpreter():
        return False
    if _INTERPRETER_PATCHED:
        return True
    try:
        from triton.runtime import autotuner, interpreter

        rewriter, transformer = interpreter.FunctionRewriter, interpreter.ASTTransformer
        orig_transform = rewriter._transform_ast
    except (ImportError, AttributeError) as e:  # another Triton layout: leave it alone
        logger.warning("cannot adapt the Triton interpreter for fla's kernels (%s); they may fail on CPU", e)
        return False

    def _bench(self, *args, config=None, **kwargs):
        return [0.0, 0.0, 0.0]  # (median, p20, p80) as do_bench would return

    def _transform_ast(self, src):
        self.ast_transformer._seqmix_wrap_loops = getattr(self.fn, "__module__", "").startswith(_PATCHED_PACKAGES)
        try:
            return orig_transform(self, src)
        finally:
            self.ast_transformer._seqmix_wrap_loops = False

    def visit_For(self, node):
        self.generic_visit(node)
        it = node.iter
        is_range = isinstance(it, ast.Call) and (
            (isinstance(it.func, ast.Name) and it.func.id == "range")
            or (isinstance(it.func, ast.Attribute) and it.func.attr == "range")
        )
        if getattr(self, "_seqmix_wrap_loops", False) and is_range and isinstance(node.target, ast.Name):
            rebind = ast.Assign(
                targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                value=ast.Name(id=node.target.id, ctx=ast.Load()),
            )
            node.body.insert(0, self.visit(ast.copy_location(rebind, node)))
        return node

    autotuner.Autotuner._bench = _bench
    rewriter._transform_ast = _transform_ast
    transformer.visit_For = visit_For
    _INTERPRETER_PATCHED = True
    logger.info("Triton interpreter adapted for fla's kernels (first autotune config, tensor loop indices)")
    return True
