"""RECE (Gong et al., "Reliable and Efficient Concept Erasure", ECCV 2024): UCE, then rounds of
closed-form adversarial embeddings.

After an edit W_l of every projection l (trust/methods/uce/method.py), each erased state c finds
the embedding that makes the *edited* projections reproduce what the original ones gave c,

    c' = argmin_c'  sum_l ||W_l c' - W_old,l c||^2 + adv_ridge * s ||c'||^2
       = (sum_l W_l^T W_l + adv_ridge * s I)^-1 sum_l W_l^T W_old,l c      (s: mean diagonal of sum_l W_l^T W_l)

(an input the edited model still reads as the concept: the closed-form counterpart of an attack in
the embedding space). The c' join the erased rows with c's target (the anchor's original
projection), and the edit is solved again from the original weights with every round's rows and
the same preserved rows (the regulariser that keeps unrelated concepts), `rounds` times. All in the
first `step`.
"""

from __future__ import annotations

import torch

from trust.methods.uce.method import UceMethod


def adversarial_embeddings(weights: dict[str, torch.Tensor], original: dict[str, torch.Tensor], c: torch.Tensor,
                           ridge: float) -> torch.Tensor:
    """c' for every row of c (n, D), jointly over all edited projections (module docstring)."""
    gram = sum(w.T @ w for w in weights.values())
    rhs = sum(c @ w_old.T @ weights[k] for k, w_old in original.items())  # rows: (sum_l W_l^T W_old,l c)^T
    s = float(gram.diagonal().mean()) or 1.0
    lhs = gram + ridge * s * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(lhs, rhs.T).T


class ReceMethod(UceMethod):
    name = "rece"

    def edit(self) -> dict:
        c0, a0, p = self.rows()
        c, a = c0, a0
        weights = self.solve(c, a, p)
        info = {"erase_rows": len(c0), "preserve_rows": len(p), **self.residuals(weights, c0, a0, p)}
        info["uce_erase_residual"] = info["erase_residual"]
        for r in range(self.cfg.rounds):
            adv = adversarial_embeddings(weights, self.original, c0, self.cfg.adv_ridge)
            # how far this round's adversarial embeddings are from bringing the concept back
            info[f"round{r + 1}_adv_gap"] = self.gap(weights, adv, c0)
            c, a = torch.cat([c, adv]), torch.cat([a, a0])
            weights = self.solve(c, a, p)
        info.update(self.residuals(weights, c0, a0, p))
        info["adv_gap"] = self.gap(weights, adversarial_embeddings(weights, self.original, c0,
                                                                             self.cfg.adv_ridge), c0)
        self.write(weights)
        return info

    def gap(self, weights, adv: torch.Tensor, c: torch.Tensor) -> float:
        """||W adv - W_old c|| / ||W_old c|| over all projections: how far the best adversarial embeddings stay
        from reproducing the concept (0: some embedding still brings it back exactly)."""
        num = den = 0.0
        for k, w_old in self.original.items():
            want = c @ w_old.T
            num += float(((adv @ weights[k].T - want) ** 2).sum())
            den += float((want**2).sum())
        return (num / den) ** 0.5 if den else 0.0
