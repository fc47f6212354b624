"""Ring-A-Bell (Tsai et al. 2024): model-agnostic; needs only the text encoder.

Concept vector `v` = mean over (with concept, without concept) prompt pairs of the
difference of their text-encoder hidden states. For a prompt P the target is
`enc(P) + k * v`; a genetic search over discrete tokens (tournament selection, one-point
crossover with probability `crossover`, per-child mutation of one token with probability
`mutation`, two elites kept) minimises the mean squared distance of `enc(candidate)` to
the target. The best candidate is then generated on the unlearned model and detected.
"""

from __future__ import annotations

import torch

from trust.attacks.base import Attack, AttackPrompt, AttackTarget, PromptOutcome
from trust.attacks.text import candidate_tokens
from trust.config import RingABellParams

ELITES = 2


@torch.no_grad()
def concept_vector(parts, pairs: list[tuple[str, str]]) -> torch.Tensor:
    if not pairs:
        raise ValueError("Ring-A-Bell needs (with concept, without concept) prompt pairs: set "
                         "evaluate.attacks.ringabell.pairs, e.g. [['a nude woman', 'a woman']]")
    with_c = parts.encode_text([a for a, _ in pairs])
    without = parts.encode_text([b for _, b in pairs])
    return (with_c - without).mean(0)


class RingABell(Attack):
    name = "ringabell"
    params: RingABellParams

    @classmethod
    def default_params(cls) -> RingABellParams:
        return RingABellParams()

    def __init__(self, params=None, budget=None, seed=0, pairs: list[tuple[str, str]] | None = None):
        super().__init__(params, budget, seed)
        self.pairs = [tuple(x) for x in (pairs if pairs is not None else self.params.pairs)]
        self.params = self.params.model_copy(update={"pairs": self.pairs})  # recorded with the result
        self._v: torch.Tensor | None = None

    @torch.no_grad()
    def attack_one(self, target: AttackTarget, ap: AttackPrompt, index: int) -> PromptOutcome:
        p, parts = self.params, target.unlearned
        g = self.generator(index)
        if self._v is None:
            self._v = concept_vector(parts, self.pairs)
        goal = parts.encode_text([ap.prompt])[0] + p.k * self._v  # (L, D)
        cand = candidate_tokens(parts.tokenizer)
        tok = parts.tokenizer
        L = min(p.length, tok.model_max_length - 2)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

        def ids_of(pop: torch.Tensor) -> torch.Tensor:
            n = pop.shape[0]
            ids = torch.full((n, tok.model_max_length), pad, dtype=torch.long)
            ids[:, 0] = tok.bos_token_id
            ids[:, 1:L + 1] = cand[pop]
            ids[:, L + 1] = tok.eos_token_id
            return ids

        def distance(pop: torch.Tensor) -> torch.Tensor:
            h = parts.text_encoder(ids_of(pop).to(parts.text_encoder.device))[0]
            return ((h - goal) ** 2).mean(dim=(1, 2)).cpu()

        def text(ind: torch.Tensor) -> str:
            return tok.decode(cand[ind].tolist(), skip_special_tokens=True).strip()

        pop = torch.randint(len(cand), (p.population, L), generator=g)
        fit = distance(pop)
        out = PromptOutcome(ap.prompt, target.seeds(ap), ap.guidance, False, objective_start=float(fit.min()))
        for gen in range(self.steps_budget(p.generations)):
            order = fit.argsort()
            children = [pop[order[:ELITES]]]
            n_child = p.population - ELITES
            # Tournament selection (size 3) of two parents per child.
            cont = torch.randint(p.population, (n_child, 2, 3), generator=g)
            parents = cont.gather(-1, fit[cont].argmin(-1, keepdim=True)).squeeze(-1)  # (n_child, 2)
            a, b = pop[parents[:, 0]], pop[parents[:, 1]]
            cut = torch.randint(1, max(L, 2), (n_child, 1), generator=g)
            do_x = torch.rand(n_child, 1, generator=g) < p.crossover
            child = torch.where(do_x & (torch.arange(L) >= cut), b, a)
            mut = torch.rand(n_child, generator=g) < p.mutation
            pos = torch.randint(L, (n_child,), generator=g)
            new_tok = torch.randint(len(cand), (n_child,), generator=g)
            rows = mut.nonzero().flatten()
            child[rows, pos[rows]] = new_tok[rows]
            children.append(child)
            pop = torch.cat(children)
            fit = distance(pop)
            out.history.append(float(fit.min()))
            out.steps_run = gen + 1
        best = pop[fit.argmin()]
        out.objective_end = float(fit.min())
        out.adversarial = text(best)
        out.embedding = cand[best].clone()
        hit, out.score, out.images = target.check(out.adversarial, ap)
        out.broken = hit
        return out
